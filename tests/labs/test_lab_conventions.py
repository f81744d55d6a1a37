"""What every lab promises its students and instructors, checked on the notebooks as committed (fast; the
grading itself is tests/labs/test_lab_contract.py): its own grading limits, a first cell that says how to check
your work, test cells that neither silence warnings nor fail without saying which task, a released notebook
without solutions or hidden tests, and instructor notes that cover every test cell."""
from __future__ import annotations

import ast
import re

import nbformat
import pytest

from optcourse.autograde.catalogue import LABS_NOTES_DIR
from optcourse.autograde.pipeline import lab_limits
from optcourse.course.release import LABS_DIR, SOLUTIONS_DIR, lab_names


@pytest.fixture(params=lab_names())
def lab(request):
    return request.param


def _solution(lab):
    return nbformat.read(SOLUTIONS_DIR / lab / f"{lab}.ipynb", as_version=4)


def _test_cells(nb) -> dict:
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells
            if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")}


def test_grading_limits_are_the_labs_own(lab):
    limits = lab_limits(_solution(lab))
    assert 60 <= limits["cell_timeout_s"] <= limits["notebook_timeout_s"] <= 3600, limits


def test_first_cell_says_how_to_check_your_work(lab):
    first = next(c for c in _solution(lab).cells if c.cell_type == "markdown").source
    assert "How to check your work" in first and f"make validate LAB={lab}" in first
    assert "Warnings do not cost points" in first


def test_no_test_cell_silences_warnings(lab):
    """The grader turns what a test writes to stderr into a note; no test relies on a warnings filter."""
    for gid, cell in _test_cells(_solution(lab)).items():
        assert not re.search(r"filterwarnings|simplefilter|catch_warnings", cell.source), gid


def test_every_assert_says_which_task_failed(lab):
    """Feedback names the task: every assert has a message, and a literal message names its task."""
    for gid, cell in _test_cells(_solution(lab)).items():
        task = re.match(r"test_task(\d+)", gid).group(1)
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Assert):
                assert node.msg is not None, f"{gid} line {node.lineno}: an assert without a message"
                if isinstance(node.msg, ast.Constant):
                    assert f"Task {task}" in node.msg.value, f"{gid} line {node.lineno}: the message must name Task {task}"


def test_released_notebook_holds_no_solution_or_hidden_test(lab):
    text = (LABS_DIR / lab / f"{lab}.ipynb").read_text()
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
    assert "NotImplementedError" in text and "How to check your work" in text


def test_notes_cover_every_test_cell_and_the_grading_time(lab):
    notes = (LABS_NOTES_DIR / lab / "notes.md").read_text()
    missing = [gid for gid in _test_cells(_solution(lab)) if gid not in notes]
    assert not missing, f"notes.md says nothing of {missing}"
    assert "python -m optcourse.autograde" in notes and re.search(r"\d+ s\b", notes)
