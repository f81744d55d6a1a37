"""``python -m optcourse.autograde LAB SUBMISSIONS [options]`` — grade a class (see autograder/README.md).

Exit status: 0 when every submission was graded normally, 2 when some need an instructor's look
(listed in the summary), 1 when the grader itself could not run.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from optcourse.autograde.sandbox import sandbox_available
    from optcourse.core.paths import apply_offline_environment

    p = argparse.ArgumentParser(prog="python -m optcourse.autograde", description=__doc__.splitlines()[0])
    p.add_argument("lab", help="lab name, e.g. lab02_quantization (its nbgrader source is SOURCE_DIR/LAB)")
    p.add_argument("submissions", nargs="?", default="autograder/submitted",
                   help="nbgrader's submitted/ folder (<student>/<lab>/<lab>.ipynb), a folder of notebooks "
                        "(student id from the file name) or a .zip of notebooks")
    p.add_argument("--out", default=None, help="output folder (default build/autograde/LAB)")
    p.add_argument("--source-dir", default=None, help="nbgrader source folder (default solutions/)")
    p.add_argument("--db", default=None, help="gradebook URL (default sqlite:///OUT/gradebook.db; nbgrader's "
                                              "course gradebook is sqlite:///autograder/gradebook.db)")
    p.add_argument("--workers", type=int, default=2, help="parallel sandboxes (default 2); with --backend ray and "
                                                          "no --ray-address, the CPUs of the local Ray instance")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: a process pool on this machine (default); ray: one Ray task per submission")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (e.g. auto or ray://head:10001); "
                                                       "default: start a local Ray instance")
    p.add_argument("--gpus-per-task", type=float, default=None,
                   help="GPUs per submission: shows the NVIDIA devices to the sandbox, and Ray schedules by them "
                        "(default: 1 with --profile cuda, else 0)")
    p.add_argument("--cell-timeout", type=int, default=None,
                   help="seconds per cell (default: the lab's own limit from its metadata, else 60)")
    p.add_argument("--notebook-timeout", type=int, default=None,
                   help="seconds per notebook (default: the lab's own limit, else 300)")
    p.add_argument("--memory-gb", type=float, default=None,
                   help="address-space limit of the kernel in GiB (default: the lab's own, else 4)")
    p.add_argument("--profile", default=None, choices=["cpu", "cuda"], help="hardware profile for thresholds")
    p.add_argument("--keep-autograded", action="store_true",
                   help="keep each executed notebook as OUT/artifacts/<student>.autograded.ipynb (for instructors)")
    p.add_argument("--roster", default=None,
                   help="CSV with login and name and/or lms_id: the ids of a Canvas or Moodle download become "
                        "logins in the grades (see optcourse/autograde/roster.py)")
    p.add_argument("--autograded-dir", default=None,
                   help="also write each executed notebook as DIR/<student>/LAB/LAB.ipynb (nbgrader's autograded "
                        "layout: the formgrader opens them for manual grading; make autograde gives "
                        "autograder/autograded with the course's gradebook)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    apply_offline_environment()
    ok, why = sandbox_available()
    if not ok:
        print(f"error: cannot sandbox submissions here: {why}.\n"
              "Run as root on Linux with util-linux, or use the container path in autograder/README.md.",
              file=sys.stderr)
        return 1
    from optcourse.autograde.feedback import plain
    from optcourse.autograde.pipeline import grade_batch

    out = args.out or f"build/autograde/{args.lab}"
    gpus = args.gpus_per_task if args.gpus_per_task is not None else (1.0 if args.profile == "cuda" else 0.0)
    overrides = {"cell_timeout_s": args.cell_timeout, "notebook_timeout_s": args.notebook_timeout,
                 "memory_gb": args.memory_gb}
    try:
        report = grade_batch(args.lab, args.submissions, out, source_dir=args.source_dir, db_url=args.db,
                             workers=args.workers, limit_overrides=overrides, profile=args.profile, progress=not args.no_progress,
                             keep_autograded=args.keep_autograded, backend=args.backend,
                             ray_address=args.ray_address, gpus_per_task=gpus, roster=args.roster,
                             autograded_dir=args.autograded_dir)
    except ValueError as err:  # e.g. more GPUs per task than the cluster has, an unreadable zip: nothing was graded
        print(f"\nerror: {plain(err)}", file=sys.stderr)
        return 1
    print()
    print("\n".join(plain(line) for line in report.table.splitlines()))  # no submission's text drives the terminal
    print(f"\n{len(report.results)} submissions graded in {report.wall_s:.1f} s with {args.workers} workers "
          f"({args.backend} backend); "
          f"grades: {out}/grades.csv (LMS: {out}/grades_lms.csv), feedback: {out}/feedback/")
    if report.missing:
        print(f"{len(report.missing)} roster student(s) without a submission (an empty grade in grades_lms.csv): "
              f"{plain(', '.join(report.missing))}")
    if report.needs_review:
        print(f"NEEDS AN INSTRUCTOR'S LOOK: {plain(', '.join(report.needs_review))}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
