"""Lab 03 (vLLM deployment): fast static checks. Grading the solution, the blank notebook and the mistakes
catalogue (autograder/labs/lab03_vllm_deployment/mistakes.yaml) through the class pipeline is the lead's
contract test (optcourse.autograde.catalogue); here: the notebooks are committed clean, labs/ is nbgrader's
output, every mistake applies to the solution exactly once, and the lab states its grading limits.
"""

import json

import nbformat
import yaml

from optcourse.core.paths import REPO_ROOT

LAB = "lab03_vllm_deployment"
SOLUTION = REPO_ROOT / "solutions" / LAB / f"{LAB}.ipynb"
STUDENT = REPO_ROOT / "labs" / LAB / f"{LAB}.ipynb"
MISTAKES = REPO_ROOT / "autograder" / "labs" / LAB / "mistakes.yaml"
TASKS = ["task1", "task2", "task3", "task4", "task5", "task6"]
PERF = {"perf:slo_goodput": "task6"}   # the grader's own checks, by task


def graded_cells(nb) -> dict[str, int]:
    return {c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"].get("points", 0) for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade")}


def test_notebooks_are_well_formed():
    for path in (SOLUTION, STUDENT):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and all(k in params[0].source for k in ("device", "smoke", "metrics_path", "output_dir"))
    student = STUDENT.read_text()
    assert "BEGIN HIDDEN TESTS" not in student and "hash_to_block.get(h)" not in student


def test_labs_folder_is_nbgrader_output(tmp_path):
    from optcourse.course.release import generate

    generate([LAB], dest=tmp_path)
    fresh = json.loads((tmp_path / LAB / f"{LAB}.ipynb").read_text())
    committed = json.loads(STUDENT.read_text())
    assert [c["source"] for c in fresh["cells"]] == [c["source"] for c in committed["cells"]]


def test_lab_states_its_grading_limits_and_how_to_check():
    nb = nbformat.read(SOLUTION, as_version=4)
    grading = nb.metadata["optcourse"]["grading"]
    assert grading["cell_timeout_s"] >= 600 and grading["notebook_timeout_s"] >= grading["cell_timeout_s"]
    assert "make validate LAB=lab03_vllm_deployment" in nb.cells[0].source
    assert sum(graded_cells(nb).values()) == 23


def test_mistakes_apply_once_and_lose_only_their_task():
    nb = nbformat.read(SOLUTION, as_version=4)
    cells = {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells if "grade_id" in c.metadata.get("nbgrader", {})}
    graded = graded_cells(nb)
    mistakes = yaml.safe_load(MISTAKES.read_text())
    ids = [m["id"] for m in mistakes]
    assert len(ids) == len(set(ids))
    per_task = {t: 0 for t in TASKS}
    for m in mistakes:
        assert m["why"] and m["loses"], m["id"]
        for edit in m["edits"]:
            assert cells[edit["cell"]].count(edit["replace"]) == 1, (m["id"], edit["replace"])
        tasks = {PERF.get(g) or g.split("_")[1] for g in m["loses"]}
        assert len(tasks) == 1 and set(m["loses"]) <= set(graded) | set(PERF), m["id"]
        assert all(e["cell"].startswith(next(iter(tasks))) for e in m["edits"]), m["id"]
        per_task[tasks.pop()] += 1
    assert all(n >= 3 for n in per_task.values()), per_task
