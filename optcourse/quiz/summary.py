"""Self-check rows for the repository's `make run` report.

`summary(tmpdir)` exercises the whole quiz pipeline on shipped data (bank,
sample key and responses) in well under a second or two and returns rows of
{"item", "metric", "measured", "threshold", "passed"}.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections import Counter
from pathlib import Path

from . import bank as bank_module
from .export import export_gift, export_qti
from .generate import build_quiz, write_quiz
from .grade import grade_all
from .testwise import MAX_GAIN_OVER_CHANCE, export_order, presented_questions, strategy_scores

MIN_BANK_SIZE = 63
MIN_PER_LECTURE = 8
QUIZ_LENGTH = 25
SAMPLE_KEY = bank_module.SAMPLES_DIR / "key" / "key_sample.json"
SAMPLE_RESPONSES = bank_module.SAMPLES_DIR / "responses"
EXPECTED_SCORES = bank_module.SAMPLES_DIR / "expected_scores.json"
# Field names that must never appear in a student-facing quiz file.
ANSWER_FIELDS = {"answer", "correct", "explanation", "tolerance", "formula", "params", "seed"}


def leaked_answer_fields(document) -> list[str]:
    """Paths of answer-revealing keys anywhere in a (student) JSON document."""
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            for name, value in node.items():
                if name in ANSWER_FIELDS:
                    found.append(f"{path}/{name}")
                walk(value, f"{path}/{name}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}/{index}")

    walk(document, "")
    return found


def sample_grading_mismatches() -> list[str]:
    expected = json.loads(EXPECTED_SCORES.read_text(encoding="utf-8"))
    results = {r.response_path.name: r for r in grade_all(SAMPLE_KEY, SAMPLE_RESPONSES)}
    mismatches = []
    for name, want in expected.items():
        got = results.get(name)
        if got is None:
            mismatches.append(f"{name}: not graded")
        elif abs(got.score - want["score"]) > 1e-6 or got.status != want["status"]:
            mismatches.append(f"{name}: got {got.score:g} [{got.status}], expected {want['score']:g} [{want['status']}]")
    return mismatches


def _row(metric: str, measured, threshold, passed: bool) -> dict:
    return {"item": "quiz", "metric": metric, "measured": measured, "threshold": threshold, "passed": bool(passed)}


def summary(tmpdir) -> list[dict]:
    started = time.perf_counter()
    tmpdir = Path(tmpdir)
    rows = []
    bank_files = bank_module.load_bank_files()
    problems = bank_module.bank_problems(bank_files)
    rows.append(_row("bank validation problems", len(problems), "== 0", not problems))
    if problems:
        return rows  # everything below needs a valid bank
    questions = bank_module.load_bank()
    per_lecture = Counter(q["lecture"] for q in questions)
    rows.append(_row("bank size (questions)", len(questions), f">= {MIN_BANK_SIZE}", len(questions) >= MIN_BANK_SIZE))
    fewest = min(per_lecture.get(lecture, 0) for lecture in bank_module.LECTURES)
    rows.append(_row("questions in smallest lecture", fewest, f">= {MIN_PER_LECTURE}", fewest >= MIN_PER_LECTURE))

    best = max(strategy_scores(presented_questions(questions, export_order)), key=lambda result: result.gain)
    rows.append(_row("best test-wise strategy gain over chance (points)",
                     round(best.gain, 1), f"<= {MAX_GAIN_OVER_CHANCE:g}", best.gain <= MAX_GAIN_OVER_CHANCE))

    student_quiz, key = build_quiz(questions, "summary-student", seed=1, num_questions=QUIZ_LENGTH)
    paths = write_quiz(student_quiz, key, tmpdir / "students", tmpdir / "keys")
    written = json.loads(paths["quiz"].read_text(encoding="utf-8"))
    rows.append(_row("generated quiz length", len(written["questions"]), f"== {QUIZ_LENGTH}",
                     len(written["questions"]) == QUIZ_LENGTH))
    counts = Counter(q["lecture"] for q in written["questions"])
    spread = max(counts.values()) - min(counts.get(lecture, 0) for lecture in bank_module.LECTURES)
    rows.append(_row("lecture balance (max - min per quiz)", spread, "<= 1", spread <= 1))
    leaks = leaked_answer_fields(written)
    rows.append(_row("answer fields in student file", len(leaks), "== 0", not leaks))

    mismatches = sample_grading_mismatches()
    rows.append(_row("sample responses graded differently than expected", len(mismatches), "== 0", not mismatches))

    gift_text = export_gift(questions, tmpdir / "bank.gift").read_text(encoding="utf-8")
    gift_count = sum(line.startswith("::") for line in gift_text.splitlines())
    rows.append(_row("GIFT export questions", gift_count, f"== {len(questions)}", gift_count == len(questions)))
    with zipfile.ZipFile(export_qti(questions, tmpdir / "bank_qti.zip")) as archive:
        assessment = next(name for name in archive.namelist() if name != "imsmanifest.xml")
        item_count = archive.read(assessment).decode("utf-8").count("<item ")
        has_manifest = "imsmanifest.xml" in archive.namelist()
    rows.append(_row("QTI export items", item_count, f"== {len(questions)}",
                     item_count == len(questions) and has_manifest))
    elapsed = round(time.perf_counter() - started, 3)
    rows.append(_row("quiz self-check runtime (s)", elapsed, "< 20", elapsed < 20))
    return rows
