"""``python -m optcourse.autograde.benchmark`` — how much parallel grading buys on this machine.

Grades ``--copies`` copies of the demo lab's ordinary submissions (good, partial, blank) with each
configuration: sequential (the local pool with 1 worker), the local pool with ``--workers`` workers and
Ray (a local instance with ``--workers`` CPUs), ``--repeats`` times in alternating order, and prints the
wall times and the speedups over sequential: for the whole batch and for its parallel part (the
sandboxes; building the lab's template and writing the gradebook are serial in every backend).
"""
from __future__ import annotations

import argparse
import pathlib
import shutil
import statistics
import tempfile

from optcourse.core.paths import AUTOGRADER_DIR

DEMO = AUTOGRADER_DIR / "samples" / "demo_lab"
KINDS = ("good", "partial", "blank")


def configurations(workers: int) -> dict[str, dict]:
    return {"sequential": {"workers": 1, "backend": "local"},
            f"pool ({workers} workers)": {"workers": workers, "backend": "local"},
            f"ray (local, {workers} CPUs)": {"workers": workers, "backend": "ray"}}


def main(argv: list[str] | None = None) -> int:
    from optcourse.autograde import Limits, grade_batch, sandbox_available

    p = argparse.ArgumentParser(prog="python -m optcourse.autograde.benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=12, help="submissions per batch (default 12)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--only", default=None, help="comma-separated configuration names' first words (sequential,pool,ray)")
    args = p.parse_args(argv)
    ok, why = sandbox_available()
    if not ok:
        print(f"cannot sandbox here: {why}")
        return 1
    configs = configurations(args.workers)
    if args.only:
        configs = {k: v for k, v in configs.items() if k.split()[0] in args.only.split(",")}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory(prefix="autograde-bench-") as tmp:
        subs = pathlib.Path(tmp) / "submissions"
        subs.mkdir()
        for i in range(args.copies):
            shutil.copy(DEMO / "submissions" / f"{KINDS[i % len(KINDS)]}.ipynb", subs / f"student{i:03d}.ipynb")
        for rep in range(args.repeats):
            order = list(configs) if rep % 2 == 0 else list(reversed(configs))  # alternate: drift hits all alike
            for name in order:
                report = grade_batch("demo_lab", subs, pathlib.Path(tmp) / f"out-{rep}-{name.split()[0]}",
                                     source_dir=DEMO / "source", limits=Limits(cell_timeout_s=10, notebook_timeout_s=120),
                                     progress=False, perf_checks=[], **configs[name])
                times[name].append((report.wall_s, report.phases["sandboxes"]))
                print(f"  run {rep + 1}: {name}: {report.wall_s:.1f} s (sandboxes {report.phases['sandboxes']:.1f} s)",
                      flush=True)
    base = [t for t in times.get("sequential", [])]
    print(f"\n{args.copies} demo-lab submissions, {args.repeats} runs each (min-max):")
    print(f"{'configuration':<24} {'wall s':>14} {'speedup':>14} {'sandboxes s':>14} {'speedup':>14}")
    for name, runs in times.items():
        cols = []
        for k in (0, 1):
            vals = [r[k] for r in runs]
            cols.append(f"{min(vals):.1f}-{max(vals):.1f}")
            if base:
                ref = statistics.median(b[k] for b in base)
                cols.append(f"{ref / max(vals):.2f}-{ref / min(vals):.2f}x")
            else:
                cols.append("")
        print(f"{name:<24} {cols[0]:>14} {cols[1]:>14} {cols[2]:>14} {cols[3]:>14}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
