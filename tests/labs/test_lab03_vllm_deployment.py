"""Lab 03 (vLLM deployment): the solution scores full marks, the student version zero, wrong answers lose
exactly their tasks' points; the notebooks are committed clean and labs/ is nbgrader's output.

The solution starts two vLLM servers, so a graded execution takes minutes: the tests grade the solution
once and one notebook with several bugs at once. The student version stops before any server starts
(the server cells call the student's Task 1 functions first).
"""

import json
import os
import pathlib

import nbformat
import pytest

from optcourse.grading import autograde_notebook
from optcourse.paths import REPO_ROOT

LAB = "lab03_vllm_deployment"
SOLUTION = REPO_ROOT / "solutions" / LAB / f"{LAB}.ipynb"
STUDENT = REPO_ROOT / "labs" / LAB / f"{LAB}.ipynb"
TASKS = ["test_task1", "test_task2", "test_task3", "test_task4", "test_task5"]

# (task, text in the solution, its plausible wrong replacement)
BUGS = [
    # Task 1: forgets that both K and V are cached
    ("test_task1", "return 2 * num_layers * num_kv_heads * head_dim * kvcache.dtype_bytes(dtype)",
     "return num_layers * num_kv_heads * head_dim * kvcache.dtype_bytes(dtype)"),
    # Task 2: fork copies the parent's blocks instead of sharing them ...
    ("test_task2", "        for block in self.tables[parent_id]:\n            self.ref_counts[block] += 1\n"
                   "        self.tables[child_id] = list(self.tables[parent_id])",
     "        self.tables[child_id] = [self._take_fresh() for _ in self.tables[parent_id]]"),
    # ... and free leaks the blocks (never returns them to the pool)
    ("test_task2", "        for block in reversed(self.tables.pop(seq_id)):\n            self._release(block)",
     "        self.tables.pop(seq_id)"),
    # Task 4: TTFT percentiles computed on the inter-token latencies
    ("test_task4", '"ttft": [r.ttft_s for r in ok],', '"ttft": [g for r in ok for g in r.itl_s],'),
]


@pytest.fixture(autouse=True)
def library_on_kernel_path(monkeypatch):
    """The grading kernels run in a temporary course folder: let them import the course library."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))


def test_notebooks_are_committed_clean():
    for path in (SOLUTION, STUDENT):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), path
        params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and all(k in params[0].source for k in ("device", "smoke", "metrics_path", "output_dir"))
    student = STUDENT.read_text()
    assert "BEGIN HIDDEN TESTS" not in student and "hash_to_block.get(h)" not in student


def test_labs_folder_is_nbgrader_output(tmp_path):
    from optcourse.release import generate

    generate([LAB], dest=tmp_path)
    fresh = json.loads((tmp_path / LAB / f"{LAB}.ipynb").read_text())
    committed = json.loads(STUDENT.read_text())
    assert [c["source"] for c in fresh["cells"]] == [c["source"] for c in committed["cells"]]


def test_bugs_apply_to_the_solution():
    source = SOLUTION.read_text()
    nb = nbformat.read(SOLUTION, as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    for _, good, _ in BUGS:
        assert text.count(good) == 1, good
    assert source


@pytest.mark.notebooks
@pytest.mark.timeout(60 * 10)
def test_student_version_scores_zero():
    report = autograde_notebook(LAB, STUDENT)
    assert report.max_score == 18
    assert report.score == 0, report.cells


@pytest.mark.notebooks
@pytest.mark.server
@pytest.mark.timeout(60 * 30)
def test_solution_scores_full_marks():
    report = autograde_notebook(LAB, SOLUTION)
    assert report.score == report.max_score == 18, report.cells


@pytest.mark.notebooks
@pytest.mark.server
@pytest.mark.timeout(60 * 30)
def test_wrong_answers_lose_exactly_their_tasks(tmp_path):
    nb = nbformat.read(SOLUTION, as_version=4)
    for _, good, bad in BUGS:
        for cell in nb.cells:
            if good in cell.source:
                cell.source = cell.source.replace(good, bad)
    wrong = tmp_path / f"{LAB}.ipynb"
    nbformat.write(nb, wrong)
    report = autograde_notebook(LAB, wrong, student="wrong")
    broken = {task for task, _, _ in BUGS}
    for task in TASKS:
        score, max_score = report.task_scores(task)
        assert max_score > 0, task
        if task in broken:
            assert score == 0, (task, report.cells)
        else:
            assert score == max_score, (task, report.cells)
