"""Lab 01 (TensorRT / INT8): the solution gets full marks, the released notebook zero, and wrong answers lose
exactly their task's points. Each test grades the notebook once with nbgrader (minutes on 2 cores)."""
import json
import pathlib

import nbformat
import pytest

from optcourse.grading import autograde_notebook
from optcourse.paths import REPO_ROOT

LAB = "lab01_tensorrt_int8"
SOURCE = REPO_ROOT / "solutions" / LAB / f"{LAB}.ipynb"
RELEASED = REPO_ROOT / "labs" / LAB / f"{LAB}.ipynb"
TASKS = {"test_task1_export": 3, "test_task2a_absmax": 2, "test_task2b_percentile": 2, "test_task2c_entropy": 3,
         "test_task3_qdq": 4, "test_task4_agreement": 2}

# plausible mistakes, one per task, injected all at once: (task, correct line, wrong line)
WRONG = [
    ("test_task1_export",  # the batch axis is frozen to the example's 2
     'dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})', ")"),
    ("test_task2a_absmax",  # the largest value instead of the largest magnitude
     "    a = np.abs(np.asarray(x, dtype=np.float64))\n    if axis is None:\n        return float(a.max())",
     "    a = np.asarray(x, dtype=np.float64)\n    if axis is None:\n        return float(a.max())"),
    ("test_task2c_entropy",  # off by one: the counts of the first bin past the cut are lost
     "p[i - 1] += hist[i:].sum()", "p[i - 1] += hist[i + 1:].sum()"),
    ("test_task4_agreement",  # dot products instead of cosines
     "    a, p, n = unit(a), unit(p), unit(n)\n", ""),
]


def test_source_is_clean_and_has_the_conventions():
    nb = nbformat.read(SOURCE, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and all(k in params[0].source for k in ("device", "smoke", "metrics_path", "output_dir"))
    graded = {c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"].get("points") for c in nb.cells
              if c.metadata.get("nbgrader", {}).get("grade")}
    assert {k: graded[k] for k in TASKS} == TASKS and graded["task5_written"] == 3
    for task, right, _ in WRONG:
        assert nb_source(nb).count(right) == 1, f"the wrong-answer patch for {task} no longer applies"


def nb_source(nb) -> str:
    return "\n".join(c.source for c in nb.cells)


def test_released_notebook_has_no_solutions_or_hidden_tests():
    text = RELEASED.read_text()
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text and "vpdpbusd" in text
    assert "Model answer" not in text
    assert (RELEASED.parent / "hard_negatives.tsv").exists()


@pytest.mark.notebooks
@pytest.mark.timeout(1500)
def test_solution_scores_full_marks():
    report = autograde_notebook(LAB, SOURCE)
    for grade_id, points in TASKS.items():
        assert report.cells[grade_id] == (points, points), (grade_id, report.cells[grade_id])


@pytest.mark.notebooks
@pytest.mark.timeout(1500)
def test_released_notebook_scores_zero():
    report = autograde_notebook(LAB, RELEASED)
    assert report.score == 0, report.cells
    assert report.max_score == sum(TASKS.values()) + 3


@pytest.mark.notebooks
@pytest.mark.timeout(1500)
def test_wrong_answers_lose_exactly_their_tasks(tmp_path):
    nb = nbformat.read(SOURCE, as_version=4)
    for _, right, wrong in WRONG:
        hits = [c for c in nb.cells if right in c.source]
        assert len(hits) == 1
        hits[0].source = hits[0].source.replace(right, wrong)
    path = tmp_path / f"{LAB}.ipynb"
    nbformat.write(nb, path)
    report = autograde_notebook(LAB, path)
    broken = {task for task, _, _ in WRONG}
    for grade_id, points in TASKS.items():
        expected = 0 if grade_id in broken else points
        assert report.cells[grade_id][0] == expected, (grade_id, report.cells[grade_id], json.dumps(report.cells))
