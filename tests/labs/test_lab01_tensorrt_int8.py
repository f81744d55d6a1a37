"""Lab 01 (TensorRT / INT8): fast static checks of the lab and its mistakes catalogue.

Grading itself (solution full marks, released notebook 0, each mistake of
autograder/labs/lab01_tensorrt_int8/mistakes.yaml losing exactly its cells) runs through the class autograder in the
lead's contract test (``python -m optcourse.autograde.catalogue lab01_tensorrt_int8``), not here."""
import pathlib

import nbformat
import numpy as np
import pytest

from optcourse.autograde import catalogue
from optcourse.core.paths import REPO_ROOT

LAB = "lab01_tensorrt_int8"
SOURCE = REPO_ROOT / "solutions" / LAB / f"{LAB}.ipynb"
RELEASED = REPO_ROOT / "labs" / LAB / f"{LAB}.ipynb"
TASKS = {"test_task1_export": 3, "test_task2a_absmax": 2, "test_task2b_percentile": 2, "test_task2c_entropy": 3,
         "test_task3_qdq": 4, "test_task3b_engine": 4, "test_task4_agreement": 2}
PERF_CHECKS = {"perf:int8_speedup"}


@pytest.fixture(scope="module")
def nb():
    return nbformat.read(SOURCE, as_version=4)


def cells_by_id(nb) -> dict:
    return {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells if c.metadata.get("nbgrader")}


def test_source_has_the_conventions(nb):
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and all(k in params[0].source for k in ("device", "smoke", "metrics_path", "output_dir"))
    graded = {gid: c.metadata["nbgrader"].get("points") for gid, c in cells_by_id(nb).items()
              if c.metadata["nbgrader"].get("grade")}
    assert {k: graded[k] for k in TASKS} == TASKS and graded["task5_written"] == 3
    assert set(graded) == set(TASKS) | {"task5_written"}


def test_task3_text_states_the_speed_check_and_the_shared_cause(nb):
    text = next(c.source for c in nb.cells if c.cell_type == "markdown" and "### Task 3" in c.source)
    assert "outputs/digits_int8_t3.onnx" in text and "Speed check (2 more points" in text
    assert "S8S8" in text and "can cost both" in text
    assert "outputs/digits_int8_t3.onnx" in cells_by_id(nb)["test_task3_qdq"].source.replace('out / "', "outputs/")


def test_mistakes_catalogue_applies_once_and_covers_every_task(nb):
    mistakes = catalogue.load(LAB)
    per_task = {gid: 0 for gid in TASKS}
    for m in mistakes:
        catalogue.apply(nb, [m])  # raises when an edit does not occur exactly once in its cell
        assert m.loses <= set(TASKS) | PERF_CHECKS, f"{m.id} loses unknown cells {sorted(m.loses - set(TASKS))}"
        for gid in m.loses & set(TASKS):
            per_task[gid] += 1
        assert all(e.cell.startswith("task") for e in m.edits), f"{m.id} must edit solution cells only"
    assert all(n >= 2 for n in per_task.values()), per_task
    assert catalogue.apply(nb, mistakes)  # all at once too (each notebook of the batch combines several)


def test_released_notebook_has_no_solutions_or_hidden_tests():
    text = RELEASED.read_text()
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text and "vpdpbusd" in text
    assert "Model answer" not in text and "How to check your work" in text
    assert (RELEASED.parent / "hard_negatives.tsv").exists()


def _run_test_cell(nb, gid: str, namespace: dict) -> None:
    source = cells_by_id(nb)[gid].source
    exec(compile(source, f"<{gid}>", "exec"), namespace)  # hidden-test markers are comments


@pytest.fixture(scope="module")
def task1_namespace(tmp_path_factory):
    import torch

    from optcourse.techniques import export as ox
    from optcourse.models.digits import load_digits_resnet

    torch.manual_seed(0)
    return {"ox": ox, "pathlib": pathlib, "load_digits_resnet": load_digits_resnet, "np": np,
            "digits_model": load_digits_resnet(), "x_test": torch.rand(40, 1, 64, 64),
            "out": tmp_path_factory.mktemp("lab01")}


def test_task1_test_passes_the_library_export(nb, task1_namespace):
    from optcourse.techniques import export as ox

    ns = dict(task1_namespace, export_digits_onnx=lambda model, path: ox.export_digits(model, path))
    _run_test_cell(nb, "test_task1_export", ns)


@pytest.mark.parametrize("opset", [11, 18])
def test_task1_test_rejects_another_opset(nb, task1_namespace, opset):
    from optcourse.techniques import export as ox

    ns = dict(task1_namespace, export_digits_onnx=lambda model, path: ox.export_digits(model, path, opset=opset))
    with pytest.raises(AssertionError, match="opset 17"):
        _run_test_cell(nb, "test_task1_export", ns)
