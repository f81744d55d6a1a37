"""A test-wise student who never reads the questions scores no better than chance + 15 points."""

import copy
import string

import pytest

from optcourse.quiz import bank as bank_module
from optcourse.quiz import testwise
from optcourse.quiz.generate import build_quiz


@pytest.fixture(scope="module")
def questions():
    return bank_module.load_bank()


def generated_quizzes_presented(questions, students=40):
    """The choice and true/false questions of generated quizzes, in the order each student saw them."""
    presented = []
    for index in range(students):
        quiz, key = build_quiz(questions, f"testwise-{index}", seed=11)
        for student_q, key_q in zip(quiz["questions"], key["questions"]):
            if key_q["kind"] in ("single", "multi"):
                labels = key_q["correct"] if isinstance(key_q["correct"], list) else [key_q["correct"]]
                presented.append(testwise.Presented(
                    key_q["id"], key_q["kind"], key_q["prompt"], [c["text"] for c in student_q["choices"]],
                    {i for i, c in enumerate(student_q["choices"]) if c["label"] in labels}))
            elif key_q["kind"] == "truefalse":
                presented.append(testwise.Presented(key_q["id"], "truefalse", key_q["prompt"], ["false", "true"],
                                                    {1 if key_q["correct"] else 0}))
    return presented


def test_every_strategy_scores_within_chance_plus_15_points(questions):
    views = {
        "bank order": testwise.presented_questions(questions, lambda q: q["choices"]),
        "export order (GIFT/QTI)": testwise.presented_questions(questions, testwise.export_order),
        "generated quizzes, 40 students": generated_quizzes_presented(questions),
    }
    too_high = []
    for view, presented in views.items():
        print(f"\n{view}: strategy scores (percent of the credit) against chance")
        for result in testwise.strategy_scores(presented):
            print(f"  {result}")
            if result.gain > testwise.MAX_GAIN_OVER_CHANCE:
                too_high.append(f"{view}: {result}")
    assert len(views["bank order"]) >= 60
    assert not too_high, "\n".join(too_high)


def test_the_bank_validator_runs_the_strategy_rule(questions):
    assert testwise.strategy_problems(questions) == []


def _leaky_bank(questions):
    """The old bank's pattern: the correct option first and much longer than the others."""
    leaky = copy.deepcopy(questions)
    for question in leaky:
        if question["kind"] in ("single", "multi"):
            correct = [c for c in question["choices"] if c.get("correct")]
            for choice in correct:
                choice["text"] += " because that is how the runtime works in practice"
            question["choices"] = correct + [c for c in question["choices"] if not c.get("correct")]
    return leaky


def test_strategies_catch_a_bank_whose_form_leaks_the_key(questions):
    problems = testwise.strategy_problems(_leaky_bank(questions))
    assert any("'longest option' (bank order)" in p and "single" in p for p in problems), problems
    assert any("'first option' (bank order)" in p for p in problems), problems
    assert any("'longest option' (export order)" in p for p in problems), problems  # length survives shuffles


def test_chance_and_credit_by_hand():
    # One correct of five: of the 32 subsets only {correct} earns anything (full credit).
    assert testwise.chance_credit("multi", {2}, 5) == pytest.approx(1 / 32)
    # Two correct of four: {a}, {b} earn 1/2, {a, b} earns 1, {a, b, wrong} earns 1/2 twice;
    # (1/2 + 1/2 + 1 + 1/2 + 1/2) / 16 subsets.
    assert testwise.chance_credit("multi", {0, 1}, 4) == pytest.approx(3 / 16)
    assert testwise.chance_credit("single", {0}, 4) == 0.25
    assert testwise.multi_credit({0, 1, 2}, {0, 1}) == pytest.approx(0.5)


def test_ties_are_coin_flips_not_wins():
    question = testwise.Presented("x", "single", "p", ["aaaa", "bbbb", "cc", "dd"], {1})
    assert testwise.ranking_credit("longest option", question, multi_picks=2) == 0.5
    assert testwise.ranking_credit("shortest option", question, multi_picks=2) == 0.0


def test_generated_labels_are_a_shuffle_of_the_bank_order(questions):
    """Per-student order is random, so the label of the correct option is spread over A..D."""
    positions = {label: 0 for label in string.ascii_uppercase[:4]}
    for index in range(30):
        _, key = build_quiz(questions, f"spread-{index}", seed=3)
        for key_q in key["questions"]:
            if key_q["kind"] == "single":
                positions[key_q["correct"]] += 1
    total = sum(positions.values())
    assert all(0.15 * total < count < 0.35 * total for count in positions.values()), positions
