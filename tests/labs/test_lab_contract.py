"""Every lab's grading contract, through the class autograder (``python -m optcourse.autograde``: the
sandbox, the lab's own limits), the way an instructor grades a class:

* the solution scores full marks and is not flagged for review;
* the released student notebook scores 0;
* every plausible wrong implementation in ``autograder/labs/<lab>/mistakes.yaml`` loses exactly the cells it
  names and keeps every other point (mistakes of different tasks share a notebook, so a mistake that
  leaked into another task's points would show).

One batch per lab (``optcourse.autograde.catalogue.run``); the grading time of each notebook is printed.
"""
from __future__ import annotations

import os

import pytest

from optcourse.autograde import catalogue
from optcourse.autograde.sandbox import sandbox_available
from optcourse.course.release import lab_names

SANDBOX, WHY = sandbox_available()


def _marks(lab: str) -> list:
    marks = [pytest.mark.notebooks, pytest.mark.slow, pytest.mark.timeout(60 * 40)]
    if "vllm" in lab:
        marks.append(pytest.mark.server)
    return marks


@pytest.mark.parametrize("lab", [pytest.param(lab, marks=_marks(lab)) for lab in lab_names()])
def test_lab_grading_contract(lab, tmp_path):
    if not SANDBOX:
        if os.environ.get("CI"):
            pytest.fail(f"the class autograder's sandbox is unavailable in CI: {WHY}")
        pytest.skip(f"sandbox unavailable: {WHY}")
    report, plan, problems = catalogue.run(lab, tmp_path / lab)
    print(f"{lab}: graded {len(report.results)} notebooks in {report.wall_s:.0f} s: " +
          ", ".join(f"{r.student} {r.wall_s:.0f} s" for r in report.results))
    assert sum(isinstance(p, list) for p in plan.values()) >= 1, f"{lab}: no mistakes graded"
    assert not problems, "\n".join(problems)
