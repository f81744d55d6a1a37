"""Checking the type and form of a single answer.

Shared by the grader (which then scores the normalised answer) and by the
student notebook (which warns before saving), so both agree on what a
well-formed answer is.

Accepted forms:
  single     one option label as a string, e.g. "B" (case and spaces ignored)
  multi      a list of option labels, e.g. ["A", "C"]; [] means "none selected"
  truefalse  a JSON boolean, true or false
  numeric    a JSON number (not a string, not a boolean)
"""

from __future__ import annotations

import math

ANSWER_FORMS = {
    "single": 'one option label as a string, e.g. "B"',
    "multi": 'a list of option labels, e.g. ["A", "C"] (may be empty)',
    "truefalse": "true or false (a boolean, not a string)",
    "numeric": "a number, e.g. 12.5 (not a string)",
}


class InvalidAnswer(ValueError):
    """The answer has the wrong type or refers to options that do not exist."""


def normalise_answer(question: dict, value):
    """Return the answer in canonical form or raise InvalidAnswer with a clear message.

    `question` needs `kind` and, for choice questions, `choices` with `label`s.
    The caller handles None (unanswered) before calling.
    """
    kind = question["kind"]
    if kind == "single":
        labels = _labels(question)
        if not isinstance(value, str):
            raise InvalidAnswer(f"expected {ANSWER_FORMS[kind]}, got {_describe(value)}")
        label = value.strip().upper()
        if label not in labels:
            raise InvalidAnswer(f"{value!r} is not one of the options {', '.join(labels)}")
        return label
    if kind == "multi":
        labels = _labels(question)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise InvalidAnswer(f"expected {ANSWER_FORMS[kind]}, got {_describe(value)}")
        picked = [item.strip().upper() for item in value]
        unknown = [item for item in picked if item not in labels]
        if unknown:
            raise InvalidAnswer(f"{unknown} are not options; valid labels are {', '.join(labels)}")
        return sorted(set(picked))
    if kind == "truefalse":
        if not isinstance(value, bool):
            raise InvalidAnswer(f"expected {ANSWER_FORMS[kind]}, got {_describe(value)}")
        return value
    if kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidAnswer(f"expected {ANSWER_FORMS[kind]}, got {_describe(value)}")
        if not math.isfinite(value):
            raise InvalidAnswer(f"expected a finite number, got {value!r}")
        return float(value)
    raise InvalidAnswer(f"unknown question kind {kind!r}")


def _labels(question: dict) -> list[str]:
    return [choice["label"] for choice in question["choices"]]


def _describe(value) -> str:
    type_names = {str: "a string", bool: "a boolean", int: "a number", float: "a number",
                  list: "a list", dict: "an object"}
    return f"{type_names.get(type(value), type(value).__name__)} {value!r}"
