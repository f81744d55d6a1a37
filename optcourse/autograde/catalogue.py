"""A lab's grading contract, checked through the class autograder itself.

For each lab, ``autograder/labs/<lab>/mistakes.yaml`` lists plausible wrong implementations, each as
textual edits of the solution notebook and the graded cells it must lose::

    - id: zero_point_sign
      why: the zero point is computed with the wrong sign
      edits:
        - cell: task1_arithmetic          # grade_id of the solution cell to edit
          replace: "zero_point = (qmin - torch.round(lo / scale))"   # occurs exactly once in that cell
          with: "zero_point = (qmin + torch.round(lo / scale))"
      loses: [test_task1_affine]          # these graded cells score 0; `perf:<name>` names a performance check

``run(lab)`` grades, in ONE batch of ``python -m optcourse.autograde`` (sandbox, the lab's own limits):
the solution (full marks, no flag), the released notebook (0), the mistakes, several per notebook where
their ``loses`` sets are disjoint and their edits apply together (each notebook must lose exactly the union of its
mistakes' cells and keep every other point), and the released notebook with each attack of ``attacks.py``
(0 on every cell, no hidden-test line in its feedback). ``check`` returns every broken promise in words.

CLI: ``python -m optcourse.autograde.catalogue LAB [--out DIR] [--only solution,blank,mistakes,attacks]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import shutil
import sys

from optcourse.autograde import attacks
from optcourse.core.paths import AUTOGRADER_DIR

LABS_NOTES_DIR = AUTOGRADER_DIR / "labs"
KINDS = ("solution", "blank", "mistakes", "attacks")
# the graded solution records its metrics here (a cell after its parameters sets metrics_path); the contract test
# checks them against the thresholds, so the solution executes once per test run (no separate papermill run). A lab
# may skip measurements that no test reads in graded runs (lab 03: Task 6's own SLO runs, the static-batching
# baseline) but keeps them in a run that records its metrics.
SOLUTION_METRICS = "outputs/solution-metrics.json"


@dataclasses.dataclass(frozen=True)
class Edit:
    cell: str
    replace: str
    with_: str


@dataclasses.dataclass(frozen=True)
class Mistake:
    id: str
    why: str
    edits: tuple[Edit, ...]
    loses: frozenset[str]
    reason: str = ""   # when set, the feedback of each cell it loses must say this (e.g. why a task scored 0)

    @property
    def cells(self) -> set[str]:
        return {e.cell for e in self.edits}


def mistakes_file(lab: str) -> pathlib.Path:
    return LABS_NOTES_DIR / lab / "mistakes.yaml"


def load(lab: str, path: pathlib.Path | None = None) -> list[Mistake]:
    """The lab's mistakes, validated: a malformed entry is an error that names it."""
    import yaml

    path = path or mistakes_file(lab)
    if not path.is_file():
        raise FileNotFoundError(f"{lab} has no mistakes catalogue at {path}")
    entries = yaml.safe_load(path.read_text()) or []
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of mistakes")
    out, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"{path.name} entry {i} ({entry.get('id', '?') if isinstance(entry, dict) else '?'})"
        if not isinstance(entry, dict) or not {"id", "why", "edits", "loses"} <= set(entry):
            raise ValueError(f"{where}: needs id, why, edits and loses")
        if entry["id"] in seen:
            raise ValueError(f"{where}: duplicate id")
        seen.add(entry["id"])
        edits = []
        for e in entry["edits"] or []:
            if not isinstance(e, dict) or not {"cell", "replace", "with"} <= set(e) or e["replace"] == e["with"]:
                raise ValueError(f"{where}: each edit needs cell, replace and a different with")
            edits.append(Edit(str(e["cell"]), str(e["replace"]), str(e["with"])))
        loses = entry["loses"]
        if not edits or not isinstance(loses, list) or not loses:
            raise ValueError(f"{where}: needs at least one edit and one cell it loses")
        out.append(Mistake(str(entry["id"]), str(entry["why"]), tuple(edits), frozenset(map(str, loses)),
                           str(entry.get("reason", ""))))
    return out


def apply(nb, mistakes: list[Mistake]):
    """A copy of notebook ``nb`` with every edit of ``mistakes`` made; an edit that does not match exactly once
    in its cell is an error (the catalogue has drifted from the solution)."""
    import copy

    nb = copy.deepcopy(nb)
    cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells}
    for m in mistakes:
        for e in m.edits:
            cell = cells.get(e.cell)
            if cell is None:
                raise ValueError(f"mistake {m.id}: no cell {e.cell!r} in the solution")
            if cell.source.count(e.replace) != 1:
                raise ValueError(f"mistake {m.id}: {e.replace!r} occurs {cell.source.count(e.replace)} times in "
                                 f"{e.cell} (must be exactly once)")
            cell.source = cell.source.replace(e.replace, e.with_)
    return nb


def as_submitted(nb):
    """The notebook a student with these answers hands in: the source's answers without the instructor's markers
    (``### BEGIN/END SOLUTION`` lines) and without hidden tests (the grader puts the tests back from its gradebook),
    so the grader treats it as a student's work (the verbatim source is flagged, ``pipeline.precheck``)."""
    import copy
    import re

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        cell.source = re.sub(r"\n?[ \t]*### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS[^\n]*", "", cell.source, flags=re.S)
        cell.source = re.sub(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n?", "", cell.source, flags=re.M)
    return nb


def recording_metrics(nb):
    """``nb`` with a cell right after its parameters cell that sends its ``MetricsRecorder`` to ``SOLUTION_METRICS``
    (the grader puts the instructor's parameters, where ``metrics_path`` is None, right after the parameters cell:
    this cell comes after those)."""
    import copy

    from nbformat.v4 import new_code_cell

    nb = copy.deepcopy(nb)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, new_code_cell(f"metrics_path = {SOLUTION_METRICS!r}  # the contract test reads them"))
    return nb


def solution_metrics(out: pathlib.Path) -> dict:
    """The metrics the solution recorded while ``run(lab, out)`` graded it ({} if it wrote none)."""
    from optcourse.autograde.pipeline import artifact_path
    from optcourse.measure.metrics import read_metrics

    return read_metrics(artifact_path(pathlib.Path(out) / "graded", "solution", SOLUTION_METRICS))


def combine(mistakes: list[Mistake], solution) -> list[list[Mistake]]:
    """Group mistakes into as few notebooks as possible (first fit): within one, no two lose the same cell, and
    all their edits apply together to ``solution`` (each still matches exactly once, so no edit overlaps or
    rewrites another's text; two mistakes may edit different lines of one cell). Every graded notebook then
    shows whether each mistake loses exactly its cells: an interaction between two mistakes of one notebook
    would show as a cell lost that neither names, or a named cell kept."""
    groups: list[list[Mistake]] = []
    for m in mistakes:
        for g in groups:
            if all(not (m.loses & o.loses) for o in g) and _applies(solution, g + [m]):
                g.append(m)
                break
        else:
            groups.append([m])
    return groups


def _applies(solution, mistakes: list[Mistake]) -> bool:
    try:
        apply(solution, mistakes)
    except ValueError:
        return False
    return True


def write_batch(lab: str, folder: pathlib.Path, kinds=KINDS,
                attack_names: tuple[str, ...] | None = None) -> dict[str, list[Mistake] | str]:
    """Write the notebooks to grade into ``folder``; returns student id -> "solution", "blank" or its mistakes.
    ``attack_names``: the attacks of ``attacks.ATTACKS`` to make (default all of them)."""
    import nbformat

    from optcourse.course.release import LABS_DIR, SOLUTIONS_DIR

    folder.mkdir(parents=True, exist_ok=True)
    solution = nbformat.read(SOLUTIONS_DIR / lab / f"{lab}.ipynb", as_version=4)
    plan: dict[str, list[Mistake] | str] = {}
    if "solution" in kinds:
        nbformat.write(recording_metrics(as_submitted(solution)), folder / "solution.ipynb")
        plan["solution"] = "solution"
    if "blank" in kinds:
        shutil.copy(LABS_DIR / lab / f"{lab}.ipynb", folder / "blank.ipynb")
        plan["blank"] = "blank"
    if "mistakes" in kinds:
        for i, group in enumerate(combine(load(lab), solution), 1):
            nbformat.write(as_submitted(apply(solution, group)), folder / f"mistakes-{i}.ipynb")
            plan[f"mistakes-{i}"] = group
    if "attacks" in kinds:
        blank = nbformat.read(LABS_DIR / lab / f"{lab}.ipynb", as_version=4)
        unknown = set(attack_names or ()) - set(attacks.ATTACKS)
        if unknown:
            raise ValueError(f"unknown attacks {sorted(unknown)}: the attacks are {', '.join(attacks.ATTACKS)}")
        for name in (attacks.ATTACKS if attack_names is None else attack_names):
            nbformat.write(attacks.attacked(blank, name), folder / f"attack-{name}.ipynb")
            plan[f"attack-{name}"] = "blank"
    return plan


def leaked_lines(lab: str, graded: pathlib.Path, students) -> list[str]:
    """Hidden-test lines (whitespace and invisible characters removed) found in the students' feedback."""
    import html

    import nbformat

    from optcourse.autograde.feedback import plain
    from optcourse.autograde.pipeline import hidden_test_lines
    from optcourse.course.release import SOLUTIONS_DIR

    squash = lambda text: "".join(plain(text).split())  # noqa: E731 - invisible characters and whitespace out
    solution = nbformat.read(SOLUTIONS_DIR / lab / f"{lab}.ipynb", as_version=4)
    hidden = {squash(line) for line in hidden_test_lines(solution) if len(squash(line)) >= 20}
    problems = []
    for student in students:
        page = graded / "feedback" / f"{student}.html"
        text = squash(html.unescape(page.read_text())) if page.is_file() else ""
        found = [line for line in hidden if line in text]
        if found:
            problems.append(f"{student}: {len(found)} hidden-test line(s) in its feedback, e.g. {found[0][:80]!r}")
    return problems


def check(report, plan: dict[str, list[Mistake] | str]) -> list[str]:
    """Every way the batch broke the lab's contract, in words (empty: the contract holds)."""
    problems = []
    results = report.by_student()
    for student, expect in plan.items():
        res = results.get(student)
        if res is None:
            problems.append(f"{student}: not in the batch's results")
            continue
        if res.status != "graded":
            problems.append(f"{student}: status {res.status} ({'; '.join(res.notes)[:300]})")
        items = {g: (c.score, c.max_score, c.reason) for g, c in res.cells.items() if c.score is not None}
        items.update({f"perf:{p.name}": (p.score, p.max_score, p.reason) for p in res.perf})
        if expect == "blank":
            problems += [f"{student}: {g} scored {s:g}/{m:g}" for g, (s, m, _) in items.items() if s > 0]
            continue
        if res.needs_review:
            problems.append(f"{student}: flagged for review ({'; '.join(res.notes)[:300]})")
        lost = set() if expect == "solution" else set().union(*(m.loses for m in expect))
        unknown = lost - set(items)
        if unknown:
            problems.append(f"{student}: loses unknown cells {sorted(unknown)}")
        for g, (s, m, reason) in items.items():
            if g in lost and s > 0:
                who = [mk.id for mk in expect if g in mk.loses]
                problems.append(f"{student}: {g} scored {s:g}/{m:g} but mistake {', '.join(who)} must lose it")
            elif g in lost:
                problems += [f"{student}: {g}'s feedback must say {mk.reason!r} ({mk.id}); it says {reason[:200]!r}"
                             for mk in expect if g in mk.loses and mk.reason and mk.reason not in reason]
            elif g not in lost and s < m:
                problems.append(f"{student}: {g} lost points ({s:g}/{m:g}: {reason[:200]})" +
                                (f" although only {[mk.id for mk in expect]} were made" if expect != "solution" else ""))
    return problems


def run(lab: str, out: pathlib.Path, kinds=KINDS, workers: int = 2, progress: bool = False,
        attack_names: tuple[str, ...] | None = None):
    """Grade the lab's solution, blank and mistakes in one batch; returns ``(report, plan, problems)``."""
    from optcourse.autograde.pipeline import grade_batch

    out = pathlib.Path(out)
    if out.exists():
        shutil.rmtree(out)
    plan = write_batch(lab, out / "submissions", kinds, attack_names)
    report = grade_batch(lab, out / "submissions", out / "graded", workers=workers, progress=progress,
                         artifacts=(SOLUTION_METRICS,) if "solution" in kinds else (),
                         first=("solution",), measure=("solution",))   # the longest run (it also measures) first
    attacked = [student for student in plan if student.startswith("attack-")]
    return report, plan, check(report, plan) + leaked_lines(lab, out / "graded", attacked)


def main(argv: list[str] | None = None) -> int:
    from optcourse.autograde.sandbox import sandbox_available
    from optcourse.core.paths import apply_offline_environment

    p = argparse.ArgumentParser(prog="python -m optcourse.autograde.catalogue", description=__doc__.splitlines()[0])
    p.add_argument("lab")
    p.add_argument("--out", default=None, help="work folder (default build/catalogue/LAB)")
    p.add_argument("--only", default=",".join(KINDS), help="comma-separated: " + ",".join(KINDS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--attacks", default=None, help="comma-separated names of attacks.ATTACKS (default: all)")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    if set(kinds) - set(KINDS):
        p.error(f"--only takes {', '.join(KINDS)}")
    apply_offline_environment()
    ok, why = sandbox_available()
    if not ok:
        print(f"error: cannot sandbox submissions here: {why}", file=sys.stderr)
        return 1
    attack_names = None if args.attacks is None else tuple(a.strip() for a in args.attacks.split(",") if a.strip())
    try:
        report, plan, problems = run(args.lab, pathlib.Path(args.out or f"build/catalogue/{args.lab}"), kinds,
                                     args.workers, progress=True, attack_names=attack_names)
    except ValueError as err:   # an unknown attack or a catalogue that drifted from the solution
        print(f"error: {err}", file=sys.stderr)
        return 2
    print()
    print(report.table)
    for student, expect in plan.items():
        if isinstance(expect, list):
            print(f"{student}: {', '.join(f'{m.id} (loses {sorted(m.loses)})' for m in expect)}")
    print(f"\ngraded in {report.wall_s:.0f} s; per notebook: " +
          ", ".join(f"{r.student} {r.wall_s:.0f} s" for r in report.results))
    if problems:
        print("\nCONTRACT BROKEN:\n  " + "\n  ".join(problems))
        return 1
    print("contract holds: solution full marks, blank 0, every mistake loses exactly its cells, every attack 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
