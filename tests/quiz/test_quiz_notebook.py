"""The student notebook runs headlessly on a generated quiz and writes a gradable response file."""

import json

import nbformat
import pytest

from optcourse.quiz import bank as bank_module
from optcourse.quiz.generate import build_quiz, write_quiz
from optcourse.quiz.grade import grade_all

NOTEBOOK = bank_module.QUIZ_DIR / "take_quiz.ipynb"


def test_notebook_is_committed_clean_with_a_parameters_cell(read_notebook_with_parameters):
    _, parameters = read_notebook_with_parameters(NOTEBOOK)
    assert "quiz_file" in parameters and "response_file" in parameters


@pytest.mark.timeout(150)
def test_notebook_executes_headlessly_and_saves_responses(tmp_path):
    papermill = pytest.importorskip("papermill")
    student_quiz, key = build_quiz(bank_module.load_bank(), "nb-student", seed=11)
    paths = write_quiz(student_quiz, key, tmp_path / "students", tmp_path / "keys")
    response_file = tmp_path / "responses" / "responses_nb-student.json"

    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "executed.ipynb"),
        parameters={"quiz_file": str(paths["quiz"]), "response_file": str(response_file)},
        kernel_name="python3", cwd=str(bank_module.QUIZ_DIR), execution_timeout=120, progress_bar=False)

    response = json.loads(response_file.read_text())
    assert response["quiz_id"] == student_quiz["quiz_id"] and response["student"] == "nb-student"
    assert set(response["answers"]) == {q["id"] for q in student_quiz["questions"]}
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    outputs = json.dumps([cell.get("outputs", []) for cell in executed.cells])
    assert "Question 25" in outputs and "Saved your responses" in outputs
    # Nothing was answered in the headless run: the grader accepts the file and scores it 0.
    (result,) = grade_all(paths["key"], response_file)
    assert result.score == 0 and result.status == "problems"
    assert sum(q.status == "unanswered" for q in result.questions) == 25
