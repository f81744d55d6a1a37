"""Check a lab notebook before submitting it: ``make validate LAB=<lab> NB=<notebook>``
(``python -m optcourse.course.validate NOTEBOOK``).

Runs the notebook top to bottom in a fresh kernel, in its own folder, with the grader's rules (each cell's
time limit from the lab, a warning a test prints costs nothing: ``autograde.stderr_notes``), and lists every
test cell with its points and, when it fails, its message. Only the visible tests run here; the grader adds
hidden tests that check the same requirements, stated in the task's text or docstring, on other inputs.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

DEFAULT_CELL_TIMEOUT_S = 600


def run_tests(path: pathlib.Path, timeout: int | None = None) -> list[dict]:
    """Execute the notebook; one entry per graded test cell: grade_id, score, max_score, message."""
    import nbformat
    from nbgrader import utils
    from nbgrader.preprocessors import ClearOutput, Execute
    from traitlets.config import Config

    from optcourse.autograde.pipeline import lab_limits
    from optcourse.autograde.stderr_notes import StderrAsNotes

    nb = nbformat.read(path, as_version=4)
    lab_timeout = lab_limits(nb).get("cell_timeout_s")
    config = Config()
    config.Execute.timeout = int(timeout or lab_timeout or DEFAULT_CELL_TIMEOUT_S)
    config.Execute.interrupt_on_timeout = True
    resources = {"metadata": {"path": str(path.parent.resolve())}}
    for step in (ClearOutput, Execute, StderrAsNotes):
        nb, resources = step(config=config).preprocess(nb, resources)
    tests = []
    for cell in nb.cells:
        if cell.cell_type != "code" or not utils.is_grade(cell) or utils.is_solution(cell):
            continue
        score, max_score = utils.determine_grade(cell)
        errors = [o for o in cell.outputs if o.get("output_type") == "error"]
        message = f"{errors[0].get('ename', '')}: {errors[0].get('evalue', '')}".strip(": ") if errors else ""
        tests.append({"grade_id": cell.metadata["nbgrader"]["grade_id"], "score": float(score or 0),
                      "max_score": float(max_score), "message": message})
    return tests


def main(argv: list[str] | None = None) -> int:
    from optcourse.core.paths import apply_offline_environment

    p = argparse.ArgumentParser(prog="python -m optcourse.course.validate", description=__doc__.splitlines()[0])
    p.add_argument("notebook", help="your lab notebook, e.g. labs/lab02_quantization/lab02_quantization.ipynb")
    p.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: the lab's own limit)")
    args = p.parse_args(argv)
    path = pathlib.Path(args.notebook)
    if not path.is_file():
        print(f"error: no notebook at {path}", file=sys.stderr)
        return 2
    apply_offline_environment()
    start = time.monotonic()
    try:
        tests = run_tests(path, args.timeout)
    except Exception as exc:  # noqa: BLE001 - a notebook nbgrader cannot read or run: say why, briefly
        print(f"error: could not run {path}: {type(exc).__name__}: {str(exc)[:500]}", file=sys.stderr)
        return 2
    if not tests:
        print(f"{path} has no test cells: is it a lab notebook with its nbgrader metadata?", file=sys.stderr)
        return 2
    for t in tests:
        mark = "pass" if t["score"] >= t["max_score"] else "FAIL"
        print(f"{mark}  {t['grade_id']}  ({t['max_score']:g} pt)" + (f"  {t['message'][:300]}" if t["message"] else ""))
    passed = sum(t["score"] >= t["max_score"] for t in tests)
    print(f"\n{passed}/{len(tests)} test cells pass their visible tests ({time.monotonic() - start:.0f} s). "
          "The grader also runs hidden tests: they check the requirements written in each task's text and "
          "docstring, on other inputs.")
    return 0 if passed == len(tests) else 1


if __name__ == "__main__":
    sys.exit(main())
