"""Student-side helpers, used by quiz/take_quiz.ipynb and by generation.

Nothing here reads a key: the student only ever has the quiz file.
"""

from __future__ import annotations

import json
from pathlib import Path

from .answers import InvalidAnswer, normalise_answer

RESPONSE_FORMAT = "optcourse-quiz-response"
KIND_NAMES = {"single": "single choice", "multi": "multiple select (partial credit)",
              "truefalse": "true / false", "numeric": "numeric"}


def load_student_quiz(path) -> dict:
    quiz = json.loads(Path(path).read_text(encoding="utf-8"))
    if quiz.get("format") != "optcourse-quiz":
        raise ValueError(f"{path} is not a student quiz file (format={quiz.get('format')!r})")
    return quiz


def render_question_markdown(question: dict) -> str:
    lines = [f"### Question {question['number']} (`{question['id']}`, lecture {question['lecture']}, "
             f"{KIND_NAMES[question['kind']]}, {question['points']:g} points)", "", question["prompt"], ""]
    for choice in question.get("choices", []):
        lines.append(f"- **{choice['label']}**: {choice['text']}")
    if question["kind"] == "numeric":
        lines.append(f"Unit: {question['unit']}")
    lines += ["", f"*Answer with {question['answer_form']}.*", ""]
    return "\n".join(lines)


def render_quiz_markdown(quiz: dict) -> str:
    header = [f"# {quiz['title']}: quiz for {quiz['student']}", "",
              f"Quiz id: `{quiz['quiz_id']}`; {len(quiz['questions'])} questions, "
              f"{quiz['total_points']:g} points.", "", quiz["instructions"], ""]
    return "\n".join(header + [render_question_markdown(q) for q in quiz["questions"]])


def blank_answers(quiz: dict) -> dict:
    return {question["id"]: None for question in quiz["questions"]}


def answer_template(quiz: dict) -> str:
    """Python lines a student can paste into a cell and complete."""
    return "\n".join(f'answers["{q["id"]}"] = None  # Q{q["number"]}: {q["answer_form"]}'
                     for q in quiz["questions"])


def check_answers(quiz: dict, answers: dict) -> list[str]:
    """Human-readable warnings: unanswered, malformed or unknown entries."""
    warnings = []
    known = {question["id"]: question for question in quiz["questions"]}
    for question_id in answers:
        if question_id not in known:
            warnings.append(f"{question_id}: not a question of this quiz")
    for question in quiz["questions"]:
        value = answers.get(question["id"])
        if value is None:
            warnings.append(f"Q{question['number']} ({question['id']}): not answered yet")
            continue
        try:
            normalise_answer(question, value)
        except InvalidAnswer as error:
            warnings.append(f"Q{question['number']} ({question['id']}): {error}")
    return warnings


def save_responses(quiz: dict, answers: dict, path) -> Path:
    response = {"format": RESPONSE_FORMAT, "quiz_id": quiz["quiz_id"], "student": quiz["student"],
                "answers": dict(answers)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(response, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
