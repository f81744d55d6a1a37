"""Item analysis on the shipped class sample, checked against a hand computation."""

import csv
import json
import math

import pytest

from optcourse.quiz import bank as bank_module
from optcourse.quiz.__main__ import main
from optcourse.quiz.grade import grade_all
from optcourse.quiz.item_analysis import FLAG_STRONG_MISS, item_analysis

SAMPLES = bank_module.SAMPLES_DIR
SAMPLE_KEY = SAMPLES / "key" / "key_sample.json"
CLASS = SAMPLES / "class"


@pytest.fixture(scope="module")
def stats():
    return {item.id: item for item in item_analysis(grade_all(SAMPLE_KEY, CLASS))}


@pytest.fixture(scope="module")
def id_of():
    key = json.loads(SAMPLE_KEY.read_text())
    return {question["number"]: question["id"] for question in key["questions"]}


def point_biserial(correct: list[int], rest: list[float]) -> float:
    """Textbook form: (M1 - M0) / s * sqrt(p q), s the population standard deviation of the rest scores."""
    n = len(rest)
    right = [r for c, r in zip(correct, rest) if c]
    wrong = [r for c, r in zip(correct, rest) if not c]
    mean = sum(rest) / n
    s = math.sqrt(sum((r - mean) ** 2 for r in rest) / n)
    p = len(right) / n
    return (sum(right) / len(right) - sum(wrong) / len(wrong)) / s * math.sqrt(p * (1 - p))


# By hand, from quiz/samples/make_samples.py CLASS_CORRECT and the key's points (36 in all;
# questions 1-4 are worth 6 points, 1-8: 11, 1-12: 16, 1-16: 23, 1-20: 29, 1-24: 35):
# student k gets questions 1..4k right, and the two weakest also get question 25 (1 point).
# Totals: 7, 12, 16, 23, 29, 35. Rest score = total minus the item's own points.
Q25_RIGHT, Q25_REST = [1, 1, 0, 0, 0, 0], [6, 11, 16, 23, 29, 35]
Q5_RIGHT, Q5_REST = [0, 1, 1, 1, 1, 1], [7, 11, 15, 22, 28, 34]  # question 5: 1 point, missed only by student 1


def test_discrimination_matches_the_hand_computation(stats, id_of):
    # Rest scores share one denominator (35 points), so percents and points correlate alike.
    # On paper: M1 = 8.5, M0 = 25.75, s = sqrt(3008/6 - 20^2) = 10.066, p = 1/3:
    # (8.5 - 25.75) / 10.066 * sqrt(2/9) = -0.8078.
    assert point_biserial(Q25_RIGHT, Q25_REST) == pytest.approx(-0.8078, abs=1e-4)
    assert stats[id_of[25]].discrimination == pytest.approx(point_biserial(Q25_RIGHT, Q25_REST), abs=1e-9)
    assert stats[id_of[5]].discrimination == pytest.approx(point_biserial(Q5_RIGHT, Q5_REST), abs=1e-9)
    assert stats[id_of[5]].discrimination == pytest.approx(0.5906, abs=1e-4)


def test_difficulty_is_the_fraction_of_points_earned(stats, id_of):
    assert stats[id_of[25]].difficulty == pytest.approx(2 / 6)
    assert stats[id_of[5]].difficulty == pytest.approx(5 / 6)
    assert stats[id_of[24]].difficulty == pytest.approx(1 / 6)
    assert stats[id_of[1]].difficulty == 1.0 and stats[id_of[1]].discrimination is None  # no variance
    assert all(item.responses == 6 for item in stats.values())


def test_only_the_item_strong_students_miss_is_flagged(stats, id_of):
    flagged = [item.id for item in stats.values() if item.flag == FLAG_STRONG_MISS]
    assert flagged == [id_of[25]]


def test_make_quiz_grade_writes_the_table_and_the_plot(tmp_path, id_of):
    status = main(["grade", "--key", str(SAMPLE_KEY), "--responses", str(CLASS), "--csv", str(tmp_path / "s.csv"),
                   "--item-analysis", str(tmp_path / "items")])
    assert status == 0
    rows = {row["id"]: row for row in csv.DictReader((tmp_path / "items" / "item_analysis.csv").open())}
    assert len(rows) == 25
    assert rows[id_of[25]]["flag"] == FLAG_STRONG_MISS
    assert float(rows[id_of[25]]["discrimination"]) == pytest.approx(-0.8078, abs=1e-4)
    page = (tmp_path / "items" / "summary.html").read_text()
    assert "<svg" in page
    points = sum(row["discrimination"] != "" for row in rows.values())
    assert page.count("<circle") == points
    assert f"<li>{id_of[25]} (discrimination -0.81)</li>" in page
