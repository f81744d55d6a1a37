"""Per-student quiz generation.

One call draws a quiz for one student from the bank: questions balanced across
the lectures, options shuffled, numeric parameters drawn. It returns two
documents: the student-facing quiz (no answers) and the instructor key (all
answers, explanations and the drawn parameters). They are always written to
different folders.
"""

from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path

from . import bank as bank_module
from .answers import ANSWER_FORMS
from .student import render_quiz_markdown

QUIZ_FORMAT = "optcourse-quiz"
KEY_FORMAT = "optcourse-quiz-key"
FORMAT_VERSION = 1
COURSE_TITLE = "Advanced Model Optimization and Inference"
STUDENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
INSTRUCTIONS = (
    "Answer every question. Single choice: one option label. Multiple select: a list of "
    "labels; each correct pick earns points / number of correct options, each wrong pick "
    "subtracts the same amount, and the total is floored at 0. True/false: true or false. "
    "Numeric: a number in the unit asked for; small rounding differences are accepted."
)


def lecture_quota(num_questions: int, lectures: list[int], rng: random.Random) -> dict[int, int]:
    """Spread questions as evenly as possible; the lectures that get one extra are drawn."""
    base, extra = divmod(num_questions, len(lectures))
    lucky = set(rng.sample(lectures, extra))
    return {lecture: base + (lecture in lucky) for lecture in lectures}


def build_quiz(questions: list[dict], student: str, seed: int, num_questions: int = 25) -> tuple[dict, dict]:
    """Return (student_quiz, key) for one student. Deterministic in (bank, seed, student)."""
    if not STUDENT_ID_PATTERN.match(student):
        raise ValueError(f"student id {student!r} must match {STUDENT_ID_PATTERN.pattern}")
    # A string seed is hashed with SHA-512 by `random`, so draws do not depend on PYTHONHASHSEED.
    rng = random.Random(f"optcourse-quiz|{seed}|{student}")
    by_lecture: dict[int, list[dict]] = {}
    for question in questions:
        by_lecture.setdefault(question["lecture"], []).append(question)
    lectures = sorted(by_lecture)
    quota = lecture_quota(num_questions, lectures, rng)

    fingerprint = bank_module.bank_fingerprint(questions)
    quiz_id = f"{seed}-{student}-{fingerprint[:8]}"
    student_questions, key_questions = [], []
    for lecture in lectures:
        if quota[lecture] > len(by_lecture[lecture]):
            raise ValueError(f"lecture {lecture} has only {len(by_lecture[lecture])} questions, need {quota[lecture]}")
        for question in rng.sample(by_lecture[lecture], quota[lecture]):
            number = len(student_questions) + 1
            student_view, key_view = instantiate(question, rng, number)
            student_questions.append(student_view)
            key_questions.append(key_view)

    common = {"version": FORMAT_VERSION, "quiz_id": quiz_id, "student": student, "title": COURSE_TITLE}
    total_points = sum(q["points"] for q in key_questions)
    student_quiz = {"format": QUIZ_FORMAT, **common, "instructions": INSTRUCTIONS,
                    "total_points": total_points, "questions": student_questions}
    key = {"format": KEY_FORMAT, **common, "seed": seed, "bank_fingerprint": fingerprint,
           "total_points": total_points, "questions": key_questions}
    return student_quiz, key


def instantiate(question: dict, rng: random.Random, number: int) -> tuple[dict, dict]:
    """Turn a bank question into (student view, key view) with a concrete draw."""
    kind = question["kind"]
    shared = {"id": question["id"], "number": number, "lecture": question["lecture"],
              "kind": kind, "points": question["points"]}
    key_view = {**shared, "objective": question["objective"]}
    student_view = dict(shared)
    if kind in ("single", "multi"):
        order = list(range(len(question["choices"])))
        rng.shuffle(order)
        labelled = [{"label": string.ascii_uppercase[position], **question["choices"][index]}
                    for position, index in enumerate(order)]
        student_view["prompt"] = key_view["prompt"] = question["prompt"]
        student_view["choices"] = [{"label": c["label"], "text": c["text"]} for c in labelled]
        key_view["choices"] = [{"label": c["label"], "text": c["text"], "correct": bool(c.get("correct"))}
                               for c in labelled]
        correct = [c["label"] for c in labelled if c.get("correct")]
        key_view["correct"] = correct[0] if kind == "single" else correct
    elif kind == "truefalse":
        student_view["prompt"] = key_view["prompt"] = question["prompt"]
        key_view["correct"] = question["answer"]
    else:
        params = bank_module.draw_params(question, rng)
        prompt = bank_module.render_prompt(question, params)
        student_view["prompt"] = key_view["prompt"] = prompt
        student_view["unit"] = key_view["unit"] = question["unit"]
        key_view.update(correct=bank_module.numeric_answer(question, params), tolerance=question["tolerance"],
                        formula=question["formula"], params=params)
    student_view["answer_form"] = ANSWER_FORMS[kind]
    key_view["explanation"] = question["explanation"]
    return student_view, key_view


def write_quiz(student_quiz: dict, key: dict, out_dir: Path, key_dir: Path) -> dict[str, Path]:
    """Write quiz_<student>.json/.md to out_dir and key_<student>.json to key_dir."""
    out_dir, key_dir = Path(out_dir), Path(key_dir)
    if out_dir.resolve() == key_dir.resolve():
        raise ValueError("the key folder must differ from the student folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    key_dir.mkdir(parents=True, exist_ok=True)
    student = student_quiz["student"]
    paths = {"quiz": out_dir / f"quiz_{student}.json", "markdown": out_dir / f"quiz_{student}.md",
             "key": key_dir / f"key_{student}.json"}
    paths["quiz"].write_text(json.dumps(student_quiz, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_quiz_markdown(student_quiz), encoding="utf-8")
    paths["key"].write_text(json.dumps(key, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths
