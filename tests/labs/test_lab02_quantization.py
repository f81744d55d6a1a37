"""Lab 02 (quantization): the solution scores full marks, the student release scores zero, and plausible
wrong answers lose exactly their tasks' points."""

import pathlib

import nbformat
import pytest

from optcourse.grading import autograde_notebook
from optcourse.release import LABS_DIR, SOLUTIONS_DIR

LAB = "lab02_quantization"
SOLUTION = SOLUTIONS_DIR / LAB / f"{LAB}.ipynb"
STUDENT = LABS_DIR / LAB / f"{LAB}.ipynb"

# (grade_id of the task's solution cell, line in the solution, wrong line, test cell that must lose its points)
BUGS = [
    # zero-point sign error
    ("task1_arithmetic", "zero_point = (qmin - torch.round(lo / scale))",
     "zero_point = (qmin + torch.round(lo / scale))", "test_task1_affine"),
    # per-channel scales reduced over the channel axis instead of over the others
    ("task1_arithmetic", "dims = [d for d in range(x.dim()) if d != axis] if axis is not None",
     "dims = [d for d in range(x.dim()) if d == axis] if axis is not None", "test_task1_per_channel"),
    # STE missing: no gradient through rounding
    ("task4_ste", "return grad_output * inside, None, None, None, None",
     "return torch.zeros_like(grad_output), None, None, None, None", "test_task4_ste"),
    # groups reshaped along the wrong dimension (groups of rows instead of chunks of each row)
    ("task5_int4", "g = w.float().reshape(out_features, in_features // group_size, group_size)",
     "g = w.float().T.reshape(in_features // group_size, out_features, group_size).transpose(0, 1)",
     "test_task5_groups"),
]


def _cells_by_id(nb):
    return {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells}


def test_solution_notebook_is_clean_and_well_formed(read_clean_notebook):
    nb, params = read_clean_notebook(SOLUTION)
    assert all(k in params for k in ("device", "smoke", "metrics_path", "output_dir"))
    ids = _cells_by_id(nb)
    for task, line, _, test_id in BUGS:
        assert line in ids[task].source, f"{line!r} is no longer in {task}"
        assert ids[test_id].metadata["nbgrader"]["grade"]


def test_student_release_has_no_solutions_or_hidden_tests():
    text = STUDENT.read_text()
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
    assert "NotImplementedError" in text


@pytest.mark.notebooks
@pytest.mark.timeout(1800)
def test_solution_scores_full_marks(tmp_path):
    report = autograde_notebook(LAB, SOLUTION, timeout=1500)
    assert report.max_score >= 10
    assert report.score == report.max_score, report.cells


@pytest.mark.notebooks
@pytest.mark.timeout(1800)
def test_student_release_scores_zero():
    report = autograde_notebook(LAB, STUDENT, timeout=1500)
    assert report.max_score >= 10
    assert report.score == 0, report.cells


@pytest.mark.notebooks
@pytest.mark.timeout(1800)
def test_wrong_answers_lose_exactly_their_tasks(tmp_path):
    nb = nbformat.read(SOLUTION, as_version=4)
    ids = _cells_by_id(nb)
    for task, line, wrong, _ in BUGS:
        ids[task].source = ids[task].source.replace(line, wrong)
    path = pathlib.Path(tmp_path) / f"{LAB}.ipynb"
    nbformat.write(nb, path)
    report = autograde_notebook(LAB, path, timeout=1500)
    broken = {test_id for *_, test_id in BUGS}
    for grade_id, (score, max_score) in report.cells.items():
        if grade_id in broken:
            assert score == 0, (grade_id, report.cells)
        else:
            assert score == max_score, (grade_id, report.cells)
