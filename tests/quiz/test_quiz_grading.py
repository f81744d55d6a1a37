"""Grading: shipped samples, partial credit, tolerance, and robustness to bad input."""

import csv
import json
import subprocess
import sys

import pytest

from optcourse.quiz import bank as bank_module
from optcourse.quiz.__main__ import main
from optcourse.quiz.grade import (grade_all, grade_file, grade_question, load_keys, multi_select_credit,
                                  numeric_within_tolerance)

SAMPLES = bank_module.SAMPLES_DIR
SAMPLE_KEY = SAMPLES / "key" / "key_sample.json"
RESPONSES = SAMPLES / "responses"

# Computed by hand from the answers chosen in quiz/samples/make_samples.py (36 points in total):
# partial = 1 + 2 + 1 + 0 + 0 + 1 + 1 + 1 + 1 + 1 + 0 + 0 + 2 + 2 + 1 + 0 + 1 + 1 + 2 + 0 + 1 + 1 + 0 + 2 + 0
EXPECTED = {
    "perfect.json": (36.0, "ok"),
    "partial.json": (22.0, "ok"),
    "missing_and_wrong_type.json": (26.0, "problems"),  # loses 1 + 2 + 2 + 1 + 1 + 1 + 2
    "wrong_quiz_id.json": (0.0, "rejected"),
    "malformed.json": (0.0, "rejected"),
}


@pytest.fixture(scope="module")
def results():
    return {result.response_path.name: result for result in grade_all(SAMPLE_KEY, RESPONSES)}


@pytest.fixture(scope="module")
def key():
    return json.loads(SAMPLE_KEY.read_text())


def test_sample_scores_match_hand_computed_values(results):
    assert set(results) == set(EXPECTED)
    for name, (score, status) in EXPECTED.items():
        assert results[name].score == pytest.approx(score, abs=1e-6), name
        assert results[name].status == status, name


def test_expected_scores_file_agrees_with_this_test():
    shipped = json.loads((SAMPLES / "expected_scores.json").read_text())
    assert {name: (row["score"], row["status"]) for name, row in shipped.items()} == EXPECTED


def test_partial_sample_question_by_question(results):
    by_number = {q.number: q for q in results["partial.json"].questions}
    assert by_number[3].earned == pytest.approx(1.0) and by_number[3].status == "partial"  # 2 right + 1 wrong of 2
    assert by_number[8].earned == pytest.approx(1.0)  # 1 of 2 right, none wrong
    assert by_number[14].earned == 2  # all 4 of 4 right
    assert by_number[23].earned == 0 and by_number[23].status == "wrong"  # 1 right, 2 wrong of 1: floored
    assert by_number[1].status == "correct"  # lower-case label accepted
    assert by_number[12].earned == 0  # off by one on an exact integer answer
    assert by_number[13].earned == 2  # 0.8% off with 1% tolerance
    assert by_number[20].earned == 0  # 2.4% off with 1% tolerance


def test_problem_sample_reports_each_problem_clearly(results):
    problems = "\n".join(results["missing_and_wrong_type.json"].problems)
    assert "unknown question id 'l9-bogus'" in problems
    assert problems.count("no answer given") == 2
    assert "expected a number" in problems and "got a string '30'" in problems
    assert "expected a list of option labels" in problems
    assert "expected true or false" in problems
    assert "'Z' is not one of the options" in problems
    assert "not valid JSON" in results["malformed.json"].problems[0]
    assert "does not match the key" in results["wrong_quiz_id.json"].problems[0]


def test_multi_select_rule():
    assert multi_select_credit(["A", "B"], ["A", "B"], 2) == 2
    assert multi_select_credit(["A", "B", "C"], ["A", "B"], 2) == pytest.approx(1.0)  # extra wrong pick
    assert multi_select_credit(["A"], ["A", "B"], 2) == pytest.approx(1.0)
    assert multi_select_credit(["C", "D"], ["A", "B"], 2) == 0  # floored, never negative
    assert multi_select_credit([], ["A", "B"], 2) == 0
    assert multi_select_credit(["A", "B", "C", "D", "E"], ["A", "B", "C"], 3) == pytest.approx(1.0)  # select-all


def naive_superset_grader(picked, correct, points):
    """A plausible but wrong grader: full credit when every correct option was picked."""
    return points if set(correct) <= set(picked) else points * len(set(picked) & set(correct)) / len(correct)


def test_a_naive_multi_grader_would_fail_the_sample_expectations(key):
    """The partial sample discriminates: a grader ignoring wrong picks scores it differently."""
    partial = json.loads((RESPONSES / "partial.json").read_text())["answers"]
    naive_total = 0.0
    for question in key["questions"]:
        result = grade_question(question, partial.get(question["id"]))
        if question["kind"] == "multi":
            naive_total += naive_superset_grader(partial[question["id"]], question["correct"], question["points"])
        else:
            naive_total += result.earned
    assert naive_total != pytest.approx(EXPECTED["partial.json"][0])


def test_numeric_tolerances():
    assert numeric_within_tolerance(101.0, 100.0, {"rel": 0.01})
    assert not numeric_within_tolerance(101.5, 100.0, {"rel": 0.01})
    assert numeric_within_tolerance(-99.0, -100.0, {"rel": 0.01})  # relative to |answer|
    assert numeric_within_tolerance(45.0, 45.0, {"abs": 0})
    assert not numeric_within_tolerance(46.0, 45.0, {"abs": 0})
    assert numeric_within_tolerance(0.1 + 0.2, 0.3, {"abs": 0})  # float noise is not a wrong answer


@pytest.mark.parametrize("value, status", [
    (True, "invalid"),      # a boolean is not a number
    ("12", "invalid"),
    (float("nan"), "invalid"),
    (None, "unanswered"),
])
def test_numeric_answer_type_checks(key, value, status):
    numeric = next(q for q in key["questions"] if q["kind"] == "numeric")
    result = grade_question(numeric, value)
    assert result.status == status and result.earned == 0


@pytest.mark.parametrize("content, fragment", [
    ("[1, 2, 3]", "top level must be a JSON object"),
    ('{"student": "sample", "quiz_id": "%s", "answers": [1]}', "'answers' must be an object"),
    ('{"student": "nobody", "quiz_id": "x", "answers": {}}', "no key for student 'nobody'"),
    ("", "not valid JSON"),
    ("\udcff", "cannot read file"),
])
def test_unusable_files_score_zero_without_crashing(tmp_path, key, content, fragment):
    path = tmp_path / "response.json"
    if content == "\udcff":
        path.write_bytes(b"\xff\xfe\x00garbage")
    else:
        path.write_text(content.replace("%s", key["quiz_id"]))
    result = grade_file(path, load_keys(SAMPLE_KEY))
    assert result.score == 0 and result.status == "rejected"
    assert fragment in result.problems[0]


def test_cli_grades_a_folder_writes_csv_and_feedback_and_signals_problems(tmp_path):
    csv_path, feedback = tmp_path / "scores.csv", tmp_path / "feedback"
    status = main(["grade", "--key", str(SAMPLES / "key"), "--responses", str(RESPONSES),
                   "--csv", str(csv_path), "--feedback", str(feedback)])
    assert status == 1  # some sample files have problems
    rows = {row["response_file"]: row for row in csv.DictReader(csv_path.open())}
    assert {name: float(rows[name]["score"]) for name in EXPECTED} == {n: s for n, (s, _) in EXPECTED.items()}
    assert rows["partial.json"]["max_score"] == "36" and rows["partial.json"]["answered"] == "25"
    assert float(rows["partial.json"]["lecture1"]) == pytest.approx(1 + 2 + 1, abs=1e-3)
    partial_feedback = (feedback / "partial.feedback.md").read_text()
    key = json.loads(SAMPLE_KEY.read_text())
    assert all(question["explanation"] in partial_feedback for question in key["questions"])
    assert "Score: **22 / 36**" in partial_feedback
    assert "not valid JSON" in (feedback / "malformed.feedback.md").read_text()


def test_cli_exit_status_zero_for_clean_file(tmp_path):
    status = main(["grade", "--key", str(SAMPLE_KEY), "--responses", str(RESPONSES / "perfect.json"),
                   "--csv", str(tmp_path / "s.csv")])
    assert status == 0


def test_module_entry_point_runs_as_a_subprocess(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "optcourse.quiz", "grade", "--key", str(SAMPLE_KEY),
                                "--responses", str(RESPONSES / "malformed.json"), "--csv", str(tmp_path / "s.csv")],
                               capture_output=True, text=True, cwd=bank_module.REPO_ROOT)
    assert completed.returncode == 1, completed.stderr
    assert "rejected" in completed.stdout
