"""Automatic grading of student responses against instructor keys.

Scoring rules (also stated in the quiz instructions):
  single, truefalse  full points if correct, else 0
  multi              points * max(0, (correct picks - wrong picks) / number of correct options)
  numeric            full points if |given - answer| <= abs tolerance, or <= rel * |answer|; else 0

Robustness: one bad file or answer never stops a batch. A question with a missing,
mistyped or invalid answer scores 0 with a message; a file that cannot be read or
matched to a key scores 0 overall. Every such case is recorded as a problem, and
the CLI exits non-zero when any file had problems.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from .answers import InvalidAnswer, normalise_answer
from .generate import KEY_FORMAT

# Floating-point slack so that an exact integer answer with abs tolerance 0 is accepted.
NUMERIC_EPSILON = 1e-9


@dataclass
class QuestionResult:
    id: str
    number: int
    lecture: int
    kind: str
    points: float
    earned: float
    status: str  # correct | partial | wrong | unanswered | invalid
    given: object = None
    message: str = ""


@dataclass
class FileResult:
    response_path: Path
    student: str = ""
    quiz_id: str = ""
    max_score: float = 0.0
    questions: list[QuestionResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    gradable: bool = True

    @property
    def score(self) -> float:
        return round(sum(q.earned for q in self.questions), 6)

    @property
    def status(self) -> str:
        if not self.gradable:
            return "rejected"
        return "problems" if self.problems else "ok"


# --- scoring of single answers -------------------------------------------------

def multi_select_credit(picked: list[str], correct: list[str], points: float) -> float:
    """(correct picks - wrong picks) / number of correct options, floored at 0, times points."""
    correct_set = set(correct)
    right = len(set(picked) & correct_set)
    wrong = len(set(picked) - correct_set)
    return points * max(0.0, (right - wrong) / len(correct_set))


def numeric_within_tolerance(given: float, answer: float, tolerance: dict) -> bool:
    allowed = tolerance["abs"] if "abs" in tolerance else tolerance["rel"] * abs(answer)
    return abs(given - answer) <= allowed + NUMERIC_EPSILON * max(1.0, abs(answer))


def grade_question(key_question: dict, value) -> QuestionResult:
    result = QuestionResult(id=key_question["id"], number=key_question["number"], lecture=key_question["lecture"],
                            kind=key_question["kind"], points=key_question["points"], earned=0.0,
                            status="wrong", given=value)
    if value is None:
        result.status, result.message = "unanswered", "no answer given"
        return result
    try:
        answer = normalise_answer(key_question, value)
    except InvalidAnswer as error:
        result.status, result.message = "invalid", f"invalid answer: {error}"
        return result
    kind, correct, points = key_question["kind"], key_question["correct"], key_question["points"]
    if kind == "multi":
        result.earned = multi_select_credit(answer, correct, points)
        if result.earned == points:
            result.status = "correct"
        elif result.earned > 0:
            result.status = "partial"
    elif kind == "numeric":
        if numeric_within_tolerance(answer, correct, key_question["tolerance"]):
            result.earned, result.status = points, "correct"
    elif answer == correct:
        result.earned, result.status = points, "correct"
    return result


# --- whole files ---------------------------------------------------------------

def load_keys(key_path) -> dict[str, dict]:
    """Keys by student id, from one key file or a folder of key_*.json files."""
    key_path = Path(key_path)
    files = sorted(key_path.glob("*.json")) if key_path.is_dir() else [key_path]
    keys = {}
    for path in files:
        key = json.loads(path.read_text(encoding="utf-8"))
        if key.get("format") != KEY_FORMAT:
            continue  # e.g. a student quiz file that ended up in the folder
        keys[key["student"]] = key
    if not keys:
        raise ValueError(f"no instructor key found in {key_path}")
    return keys


def grade_file(response_path, keys: dict[str, dict]) -> FileResult:
    result = FileResult(response_path=Path(response_path))

    def reject(message: str) -> FileResult:
        result.gradable = False
        result.problems.append(message)
        return result

    try:
        response = json.loads(result.response_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        return reject(f"cannot read file: {error}")
    except json.JSONDecodeError as error:
        return reject(f"not valid JSON (line {error.lineno}, column {error.colno}): {error.msg}")
    if not isinstance(response, dict):
        return reject("top level must be a JSON object with 'student', 'quiz_id' and 'answers'")

    student = response.get("student")
    if isinstance(student, str) and student in keys:
        key = keys[student]
    elif len(keys) == 1 and student is None:
        key = next(iter(keys.values()))
        result.problems.append(f"no 'student' field; graded against the only key ({key['student']})")
    else:
        return reject(f"no key for student {student!r}")
    result.student, result.quiz_id = key["student"], str(response.get("quiz_id", ""))
    result.max_score = sum(q["points"] for q in key["questions"])
    if response.get("quiz_id") != key["quiz_id"]:
        # Labels and numeric parameters belong to one draw; grading another draw would be meaningless.
        return reject(f"quiz_id {response.get('quiz_id')!r} does not match the key ({key['quiz_id']}); "
                          "was the quiz regenerated?")
    answers = response.get("answers")
    if not isinstance(answers, dict):
        return reject("'answers' must be an object mapping question ids to answers")

    known_ids = {question["id"] for question in key["questions"]}
    for unknown_id in sorted(set(answers) - known_ids):
        result.problems.append(f"unknown question id {unknown_id!r} ignored")
    for key_question in key["questions"]:
        question_result = grade_question(key_question, answers.get(key_question["id"]))
        result.questions.append(question_result)
        if question_result.status in ("unanswered", "invalid"):
            result.problems.append(f"Q{question_result.number} ({question_result.id}): {question_result.message}")
    return result


def response_files(responses_path) -> list[Path]:
    responses_path = Path(responses_path)
    if responses_path.is_dir():
        return sorted(path for path in responses_path.iterdir() if path.suffix == ".json" and path.is_file())
    return [responses_path]


def grade_all(key_path, responses_path) -> list[FileResult]:
    keys = load_keys(key_path)
    return [grade_file(path, keys) for path in response_files(responses_path)]


# --- reports -------------------------------------------------------------------

CSV_COLUMNS = ["student", "response_file", "quiz_id", "score", "max_score", "percent", "status",
               *[f"lecture{n}" for n in range(1, 8)], "answered", "num_questions", "problems"]


def write_csv(results: list[FileResult], csv_path) -> None:
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for result in results:
            per_lecture = {f"lecture{n}": round(float(sum(q.earned for q in result.questions if q.lecture == n)), 4)
                           for n in range(1, 8)}
            writer.writerow({
                "student": result.student, "response_file": result.response_path.name,
                "quiz_id": result.quiz_id, "score": round(result.score, 4), "max_score": result.max_score,
                "percent": round(100 * result.score / result.max_score, 2) if result.max_score else 0.0,
                "status": result.status, **per_lecture,
                "answered": sum(q.status not in ("unanswered", "invalid") for q in result.questions),
                "num_questions": len(result.questions), "problems": " | ".join(result.problems),
            })


def _format_answer(value) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, list):
        return ", ".join(map(str, value)) if value else "(none selected)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _format_expected(key_question: dict) -> str:
    correct = key_question["correct"]
    if key_question["kind"] == "numeric":
        tolerance = key_question["tolerance"]
        band = f"± {tolerance['abs']:g}" if "abs" in tolerance else f"± {100 * tolerance['rel']:g}%"
        return f"{correct:.6g} {key_question['unit']} ({band})"
    return _format_answer(correct)


def render_feedback(result: FileResult, key: dict | None) -> str:
    lines = [f"# Quiz feedback: {result.student or result.response_path.name}", ""]
    if key is not None and result.gradable:
        lines.append(f"Score: **{result.score:g} / {result.max_score:g}** "
                     f"({100 * result.score / result.max_score:.1f}%)")
    else:
        lines.append("Score: **0** (the response file could not be graded)")
    if result.problems:
        lines += ["", "## Problems with this response file", ""] + [f"- {p}" for p in result.problems]
    if key is None or not result.gradable:
        return "\n".join(lines) + "\n"
    key_by_id = {question["id"]: question for question in key["questions"]}
    for question_result in result.questions:
        key_question = key_by_id[question_result.id]
        lines += ["", f"## Q{question_result.number} ({question_result.id}): "
                      f"{question_result.earned:g} / {question_result.points:g}, {question_result.status}", "",
                  key_question["prompt"], ""]
        for choice in key_question.get("choices", []):
            marker = " (correct)" if choice["correct"] else ""
            lines.append(f"- {choice['label']}: {choice['text']}{marker}")
        lines += ["", f"- Your answer: {_format_answer(question_result.given)}",
                  f"- Correct answer: {_format_expected(key_question)}"]
        if question_result.message:
            lines.append(f"- Note: {question_result.message}")
        lines += ["", f"**Why:** {key_question['explanation']}"]
    return "\n".join(lines) + "\n"


def write_feedback(results: list[FileResult], keys: dict[str, dict], feedback_dir) -> list[Path]:
    feedback_dir = Path(feedback_dir)
    feedback_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for result in results:
        # Named after the response file, which is unique, so two files of one student do not collide.
        path = feedback_dir / f"{result.response_path.stem}.feedback.md"
        path.write_text(render_feedback(result, keys.get(result.student)), encoding="utf-8")
        written.append(path)
    return written
