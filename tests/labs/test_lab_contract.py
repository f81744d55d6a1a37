"""Every lab's grading contract, through the class autograder (``python -m optcourse.autograde``: the
sandbox, the lab's own limits), the way an instructor grades a class:

* the solution scores full marks and is not flagged for review;
* the released student notebook scores 0;
* every plausible wrong implementation in ``autograder/labs/<lab>/mistakes.yaml`` loses exactly the cells it
  names and keeps every other point (mistakes of different tasks share a notebook, so a mistake that
  leaked into another task's points would show);
* the released notebook with each kernel-side attack of ``optcourse/autograde/attacks.py`` (transformers,
  patched comparisons, hooks, threads, test leaks) scores 0 and shows no hidden-test line in its feedback.
  Each attack runs once per test run, on the lab ``ATTACKED_LAB`` names: the attacks aim at the grader (the
  trusted test runner), which is the same for every lab, and each graded notebook costs CI a blank run of its
  lab. Not on lab 03: each of its notebooks starts a vLLM server, and its tests run through the same runner;
* the solution's graded run meets the thresholds of this machine's profile (``autograder/thresholds``): each
  solution executes once per test run, in the grader, and that run is both graded and measured (lectures execute
  through papermill in tests/course/test_notebooks.py; ``make run`` executes every lab that way too).

One batch per lab (``optcourse.autograde.catalogue.run``), shared by the tests of that lab; the grading time of
each notebook is printed.
"""
from __future__ import annotations

import os

import pytest

from optcourse.autograde import catalogue
from optcourse.autograde.sandbox import sandbox_available
from optcourse.course.release import lab_names
from optcourse.measure.thresholds import check_thresholds, load_thresholds

SANDBOX, WHY = sandbox_available()


def _marks(lab: str) -> list:
    marks = [pytest.mark.notebooks, pytest.mark.slow, pytest.mark.timeout(60 * 40)]
    if "vllm" in lab:
        marks.append(pytest.mark.server)
    return marks


LABS = [pytest.param(lab, marks=_marks(lab)) for lab in lab_names()]
# attack -> the lab whose released notebook it is tried on (the one catalogue batch of that lab grades it)
ATTACKED_LAB = {"transformer_pass": "lab02_quantization", "defang_checks": "lab04_benchmarking",
                "leak_tests": "lab01_tensorrt_int8"}


def attacks_on(lab: str) -> tuple[str, ...]:
    return tuple(name for name in catalogue.attacks.ATTACKS if ATTACKED_LAB.get(name) == lab)


def test_every_attack_is_tried_on_a_lab_that_takes_attacks():
    assert set(ATTACKED_LAB) == set(catalogue.attacks.ATTACKS), "a new attack needs a lab in ATTACKED_LAB"
    assert set(ATTACKED_LAB.values()) <= set(lab_names()) and not any("vllm" in lab for lab in ATTACKED_LAB.values())


@pytest.fixture(scope="module")
def contract(tmp_path_factory):
    """``contract(lab)`` -> (report, plan, problems, out folder) of the lab's one catalogue batch."""
    runs = {}

    def run(lab: str):
        if not SANDBOX:
            if os.environ.get("CI"):
                pytest.fail(f"the class autograder's sandbox is unavailable in CI: {WHY}")
            pytest.skip(f"sandbox unavailable: {WHY}")
        if lab not in runs:
            out = tmp_path_factory.mktemp(lab)
            kinds = tuple(k for k in catalogue.KINDS if k != "attacks" or attacks_on(lab))
            report, plan, problems = catalogue.run(lab, out, kinds, attack_names=attacks_on(lab))
            print(f"{lab}: graded {len(report.results)} notebooks in {report.wall_s:.0f} s: " +
                  ", ".join(f"{r.student} {r.wall_s:.0f} s" for r in report.results))
            runs[lab] = (report, plan, problems, out, kinds)
        return runs[lab]

    return run


@pytest.mark.parametrize("lab", LABS)
def test_lab_grading_contract(lab, contract):
    report, plan, problems, _, kinds = contract(lab)
    assert sum(isinstance(p, list) for p in plan.values()) >= 1, f"{lab}: no mistakes graded"
    assert sorted(s.removeprefix("attack-") for s in plan if s.startswith("attack-")) == sorted(attacks_on(lab))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("lab", LABS)
def test_graded_solution_meets_the_thresholds(lab, contract):
    from optcourse.core.hardware import resolve_profile

    _, _, _, out, _ = contract(lab)
    measured = catalogue.solution_metrics(out)
    assert measured, f"{lab}: the graded solution recorded no metrics at {catalogue.SOLUTION_METRICS}"
    rows = check_thresholds(lab, measured, load_thresholds(resolve_profile("auto")))
    failed = [r for r in rows if not r["passed"]]
    # every metric of the run goes into the message: CI's log is often all there is to explain a miss
    assert not failed, f"thresholds not met: {failed}; all metrics of this run: {measured}"
