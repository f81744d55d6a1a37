"""Test-wise strategies: how well a student who never reads the question can do.

Each strategy answers from the form of the options only (length, position, wording,
how many options are usually right). Its score is compared with chance, the
expected score of a uniformly random answer, over the choice and true/false
questions of the bank in the order a student or an LMS shows them. A strategy
that beats chance by more than `MAX_GAIN_OVER_CHANCE` points means the bank's form
leaks the key.
"""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable

MAX_GAIN_OVER_CHANCE = 15.0  # percentage points
ABSOLUTE_WORDS = {"always", "never", "only", "every", "all", "none", "must", "cannot", "impossible", "guaranteed"}
HEDGE_WORDS = {"usually", "often", "may", "can", "typically", "generally", "mostly", "some", "roughly", "about"}
WORD = re.compile(r"[A-Za-z0-9_']+")


def export_order(question: dict) -> list[dict]:
    """The choices in the fixed shuffled order of LMS exports, seeded by the question id.

    An LMS that does not shuffle (or a printed export) must not show the bank's order either.
    """
    order = list(range(len(question["choices"])))
    random.Random(f"optcourse-export|{question['id']}").shuffle(order)
    return [question["choices"][index] for index in order]


# --- credit of one answer, as the grader gives it -------------------------------------

def multi_credit(picked: set[int], correct: set[int]) -> float:
    """Fraction of the points: (right - wrong) / number correct, floored at 0 (grade.multi_select_credit)."""
    return max(0.0, (len(picked & correct) - len(picked - correct)) / len(correct))


def chance_credit(kind: str, correct: set[int], num_options: int) -> float:
    """Expected credit of a uniformly random answer: one option, any subset, or true/false."""
    if kind == "truefalse":
        return 0.5
    if kind == "single":
        return 1.0 / num_options
    subsets = [set(s) for size in range(num_options + 1) for s in itertools.combinations(range(num_options), size)]
    return sum(multi_credit(subset, correct) for subset in subsets) / len(subsets)


# --- strategies -------------------------------------------------------------------------
# A ranking strategy scores every option (higher = "looks right"); it picks the top option
# for single choice (a tie is a coin flip among the tied options) and, for multiple select,
# the top m options, m being the number of correct options most common in the bank.

def _words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _hedging(text: str) -> int:
    words = _words(text)
    return sum(w in HEDGE_WORDS for w in words) - sum(w in ABSOLUTE_WORDS for w in words)


RANKINGS: dict[str, Callable[[str, int, int, str], float]] = {
    # (option text, position, number of options, prompt) -> score
    "longest option": lambda text, position, count, prompt: len(text),
    "shortest option": lambda text, position, count, prompt: -len(text),
    "most words": lambda text, position, count, prompt: len(_words(text)),
    "first option": lambda text, position, count, prompt: -position,
    "last option": lambda text, position, count, prompt: position,
    "hedged, not absolute wording": lambda text, position, count, prompt: _hedging(text),
    "most words shared with the prompt": lambda text, position, count, prompt:
        len(set(_words(text)) & set(_words(prompt))),
}


@dataclass
class Presented:
    """One question as the student sees it: options in order, and which are correct."""
    id: str
    kind: str
    prompt: str
    texts: list[str]
    correct: set[int]  # positions of correct options; for true/false {1} = true, {0} = false


def presented_questions(questions: list[dict], order: Callable[[dict], list[dict]]) -> list[Presented]:
    presented = []
    for question in questions:
        if question["kind"] in ("single", "multi"):
            choices = order(question)
            presented.append(Presented(question["id"], question["kind"], question["prompt"],
                                       [c["text"] for c in choices],
                                       {i for i, c in enumerate(choices) if c.get("correct")}))
        elif question["kind"] == "truefalse":
            presented.append(Presented(question["id"], "truefalse", question["prompt"], ["false", "true"],
                                       {1 if question["answer"] else 0}))
    return presented


def modal_correct_count(presented: list[Presented]) -> int:
    counts = Counter(len(q.correct) for q in presented if q.kind == "multi")
    return counts.most_common(1)[0][0] if counts else 1


def ranking_credit(name: str, question: Presented, multi_picks: int) -> float:
    rank = RANKINGS[name]
    scores = [rank(text, position, len(question.texts), question.prompt) for position, text in enumerate(question.texts)]
    if question.kind == "single":
        best = max(scores)
        tied = [i for i, score in enumerate(scores) if score == best]
        return sum(i in question.correct for i in tied) / len(tied)
    # Stable sort: ties at the cut keep presentation order (itself shuffled).
    ordered = sorted(range(len(scores)), key=lambda i: -scores[i])
    return multi_credit(set(ordered[:multi_picks]), question.correct)


def all_of_the_above_credit(question: Presented) -> float:
    """Pick every option of a multiple select; in single choice, an 'all/both of the above' option."""
    if question.kind == "multi":
        return multi_credit(set(range(len(question.texts))), question.correct)
    catch_all = [i for i, text in enumerate(question.texts) if re.search(r"\b(all|both) of the above\b", text, re.I)]
    if not catch_all:
        return chance_credit(question.kind, question.correct, len(question.texts))
    return sum(i in question.correct for i in catch_all) / len(catch_all)


@dataclass
class StrategyScore:
    strategy: str
    kind: str  # "single", "multi" or "truefalse"
    questions: int
    score: float  # percent of the available credit
    chance: float  # percent a random answer earns on the same questions

    @property
    def gain(self) -> float:
        return self.score - self.chance

    def __str__(self) -> str:
        return (f"{self.strategy:36s} {self.kind:9s} n={self.questions:3d}  score {self.score:5.1f}%  "
                f"chance {self.chance:5.1f}%  gain {self.gain:+5.1f}")


def strategy_scores(presented: list[Presented]) -> list[StrategyScore]:
    """Score of every strategy, per question kind, against chance on the same questions."""
    multi_picks = modal_correct_count(presented)
    strategies: dict[str, Callable[[Presented], float]] = {
        name: (lambda q, name=name: ranking_credit(name, q, multi_picks)) for name in RANKINGS}
    strategies["all of the above"] = all_of_the_above_credit
    results = []
    for kind in ("single", "multi"):
        subset = [q for q in presented if q.kind == kind]
        if not subset:
            continue
        chance = 100 * sum(chance_credit(kind, q.correct, len(q.texts)) for q in subset) / len(subset)
        for name, credit in strategies.items():
            score = 100 * sum(credit(q) for q in subset) / len(subset)
            results.append(StrategyScore(name, kind, len(subset), score, chance))
    truefalse = [q for q in presented if q.kind == "truefalse"]
    for answer, name in ((1, "always true"), (0, "always false")):
        if truefalse:
            score = 100 * sum(answer in q.correct for q in truefalse) / len(truefalse)
            results.append(StrategyScore(name, "truefalse", len(truefalse), score, 50.0))
    return results


def strategy_problems(questions: list[dict]) -> list[str]:
    """Strategies that beat chance by more than the limit, in bank order or in export order."""
    problems = []
    for label, order in (("bank order", lambda q: q["choices"]), ("export order", export_order)):
        for result in strategy_scores(presented_questions(questions, order)):
            if result.gain > MAX_GAIN_OVER_CHANCE:
                problems.append(f"test-wise strategy '{result.strategy}' ({label}) scores {result.score:.1f}% on "
                                f"{result.kind} questions, chance is {result.chance:.1f}% "
                                f"(limit: chance + {MAX_GAIN_OVER_CHANCE:g})")
    return problems
