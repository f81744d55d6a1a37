"""Per-student quiz generation: determinism, balance, shuffling, and no leaked answers."""

import json
from collections import Counter

import pytest

from optcourse.quiz import bank as bank_module
from optcourse.quiz.__main__ import main
from optcourse.quiz.generate import build_quiz
from optcourse.quiz.summary import leaked_answer_fields


@pytest.fixture(scope="module")
def questions():
    return bank_module.load_bank()


def test_generation_is_deterministic_for_seed_and_student(questions):
    assert build_quiz(questions, "alice", 7) == build_quiz(questions, "alice", 7)


def test_generation_differs_across_students_and_seeds(questions):
    alice, _ = build_quiz(questions, "alice", 7)
    bob, _ = build_quiz(questions, "bob", 7)
    alice_other_seed, _ = build_quiz(questions, "alice", 8)
    assert alice["questions"] != bob["questions"]
    assert alice["questions"] != alice_other_seed["questions"]
    assert alice["quiz_id"] != bob["quiz_id"]


@pytest.mark.parametrize("student", ["alice", "bob", "carol", "s-042"])
def test_quiz_has_25_questions_balanced_over_7_lectures(questions, student):
    quiz, key = build_quiz(questions, student, 2024)
    assert len(quiz["questions"]) == 25 and len(key["questions"]) == 25
    per_lecture = Counter(q["lecture"] for q in quiz["questions"])
    assert set(per_lecture) == set(range(1, 8))
    assert set(per_lecture.values()) <= {3, 4}
    assert len({q["id"] for q in quiz["questions"]}) == 25


def test_student_file_contains_no_answers(questions):
    quiz, key = build_quiz(questions, "alice", 7)
    assert leaked_answer_fields(quiz) == []
    assert leaked_answer_fields(key)  # the detector does find answers where they are
    text = json.dumps(quiz)
    for key_question in key["questions"]:
        assert key_question["explanation"] not in text


def test_choices_are_shuffled_permutations_and_key_labels_match(questions):
    bank_by_id = {q["id"]: q for q in questions}
    orders_seen = Counter()
    for student in [f"s{i}" for i in range(30)]:
        quiz, key = build_quiz(questions, student, 1)
        for student_q, key_q in zip(quiz["questions"], key["questions"]):
            if student_q["kind"] not in ("single", "multi"):
                continue
            bank_texts = [c["text"] for c in bank_by_id[student_q["id"]]["choices"]]
            texts = [c["text"] for c in student_q["choices"]]
            assert sorted(texts) == sorted(bank_texts)
            orders_seen[texts == bank_texts] += 1
            correct_texts = {c["text"] for c in bank_by_id[student_q["id"]]["choices"] if c.get("correct")}
            labels = key_q["correct"] if isinstance(key_q["correct"], list) else [key_q["correct"]]
            assert {c["text"] for c in student_q["choices"] if c["label"] in labels} == correct_texts
    assert orders_seen[False] > 5 * orders_seen[True]  # bank order only by chance


def test_numeric_parameters_are_drawn_per_student(questions):
    drawn = {}
    for student in [f"s{i}" for i in range(40)]:
        _, key = build_quiz(questions, student, 1)
        for question in key["questions"]:
            if question["kind"] == "numeric":
                drawn.setdefault(question["id"], set()).add(json.dumps(question["params"], sort_keys=True))
                bank_q = next(q for q in questions if q["id"] == question["id"])
                assert question["correct"] == bank_module.numeric_answer(bank_q, question["params"])
    varied = [qid for qid, draws in drawn.items() if len(draws) > 1]
    assert len(varied) >= 10


def test_bad_student_id_rejected(questions):
    with pytest.raises(ValueError):
        build_quiz(questions, "../evil", 1)


def test_cli_writes_student_files_and_keys_to_separate_folders(tmp_path, capsys):
    out, keys = tmp_path / "students", tmp_path / "keys"
    assert main(["generate", "--seed", "3", "--student", "ann", "--student", "ben",
                 "--out", str(out), "--key-dir", str(keys)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["quiz_ann.json", "quiz_ann.md", "quiz_ben.json", "quiz_ben.md"]
    assert sorted(p.name for p in keys.iterdir()) == ["key_ann.json", "key_ben.json"]
    quiz = json.loads((out / "quiz_ann.json").read_text())
    assert leaked_answer_fields(quiz) == []
    markdown = (out / "quiz_ann.md").read_text()
    assert markdown.count("### Question") == 25
    key = json.loads((keys / "key_ann.json").read_text())
    assert not any(question["explanation"] in markdown for question in key["questions"])
    # The same folder for both is refused rather than mixing keys into student material.
    assert main(["generate", "--seed", "3", "--student", "ann", "--out", str(out), "--key-dir", str(out)]) == 2


def test_cli_takes_the_class_from_a_roster(tmp_path, capsys):
    roster = tmp_path / "roster.csv"
    roster.write_text("login,name\nann,Ann Lee\nben,Ben Ode\n")
    out, keys = tmp_path / "students", tmp_path / "keys"
    assert main(["generate", "--seed", "3", "--roster", str(roster), "--student", "ann",
                 "--out", str(out), "--key-dir", str(keys)]) == 0
    assert sorted(p.name for p in keys.iterdir()) == ["key_ann.json", "key_ben.json"]   # ann once
    roster.write_text("name\nAnn Lee\n")
    assert main(["generate", "--seed", "3", "--roster", str(roster), "--out", str(out), "--key-dir", str(keys)]) == 2
    assert "login" in capsys.readouterr().err
    assert main(["generate", "--seed", "3", "--out", str(out), "--key-dir", str(keys)]) == 2
    assert "--roster" in capsys.readouterr().err
