"""Every lecture ends with self-check questions, each mapped to a quiz item of that lecture's bank (issue #24).

The last markdown cell of each lecture starts with ``## Self-check`` and holds a numbered list of 4-6 questions;
each question ends with ``(quiz: <id>)`` naming an item of ``quiz/bank/lecture0N_*.yaml`` that tests the same
idea, and no item is named twice.
"""
import json
import re

import pytest
import yaml

from optcourse.core.paths import REPO_ROOT

LECTURES = REPO_ROOT / "lectures"
BANK = REPO_ROOT / "quiz" / "bank"
NAMES = sorted(p.stem for p in LECTURES.glob("0[1-7]_*.ipynb"))
QUIZ_REF = re.compile(r"\(quiz:\s*([A-Za-z0-9_.-]+)\)\s*$")
ITEM = re.compile(r"^(\d+)\.\s")


def _last_markdown(name: str) -> str:
    cells = json.loads((LECTURES / f"{name}.ipynb").read_text())["cells"]
    markdown = [c for c in cells if c["cell_type"] == "markdown"]
    assert markdown, f"{name} has no markdown cell"
    return "".join(markdown[-1]["source"])


def _bank_ids(name: str) -> set[str]:
    files = sorted(BANK.glob(f"lecture{name[:2]}_*.yaml"))
    assert len(files) == 1, f"expected one quiz bank file for lecture {name[:2]}, found {files}"
    return {q["id"] for q in yaml.safe_load(files[0].read_text())["questions"]}


def _questions(text: str) -> list[str]:
    """The numbered list's items, each with its continuation lines joined."""
    items: list[str] = []
    for line in text.splitlines()[1:]:
        if ITEM.match(line):
            items.append(line)
        elif items and line.startswith((" ", "\t")) and line.strip():
            items[-1] += " " + line.strip()
        elif items and line.strip():
            break  # the list is over
    return items


def test_every_lecture_is_covered():
    assert len(NAMES) == 7, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_lecture_ends_with_self_check_mapped_to_quiz_items(name):
    text = _last_markdown(name)
    assert text.splitlines()[0].strip() == "## Self-check", (
        f"{name}: the last markdown cell must start with '## Self-check', starts with {text.splitlines()[0]!r}")
    questions = _questions(text)
    assert 4 <= len(questions) <= 6, f"{name}: {len(questions)} self-check questions, expected 4-6"
    numbers = [int(ITEM.match(q).group(1)) for q in questions]
    assert numbers == list(range(1, len(questions) + 1)), f"{name}: questions numbered {numbers}"
    bank = _bank_ids(name)
    ids = []
    for question in questions:
        ref = QUIZ_REF.search(question)
        assert ref, f"{name}: question does not end with '(quiz: <id>)': {question!r}"
        assert ref.group(1) in bank, f"{name}: quiz item {ref.group(1)!r} is not in lecture {name[:2]}'s bank"
        ids.append(ref.group(1))
    assert len(ids) == len(set(ids)), f"{name}: a quiz item is named twice: {ids}"
