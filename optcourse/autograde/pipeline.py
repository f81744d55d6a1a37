"""Grade a class: collect submissions, grade each in a sandbox (in parallel), check performance
artifacts in the trusted process, then write the gradebook, CSVs, feedback and a summary.

Trust boundary: everything a submission touches runs in ``optcourse.autograde.sandbox``; this module
(the parent) only reads the sandbox's ``result.json``, validates it against the lab's cells it
learnt from the instructor's source (ids, points), and is the only writer of the real gradebook.
Writes happen in this process, one submission after another, after the pool returns, so parallel
grading never races on nbgrader's SQLite database (nbgrader has no parallel autograde: its #174).
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import json
import os
import pathlib
import re
import secrets
import shutil
import tempfile
import time
import warnings

from optcourse.autograde import feedback as feedback_mod
from optcourse.autograde import guard
from optcourse.autograde import intake
from optcourse.autograde.intake import Submission
from optcourse.autograde import perf as perf_mod
from optcourse.autograde import roster as roster_mod
from optcourse.autograde import tester
from optcourse.autograde import seal
from optcourse.autograde.sandbox import UID_BASE, Limits, grade_task

MAX_NOTEBOOK_BYTES = 20 << 20
# in the source only (release removes them); split: the sandbox tests search readable files for the marker
INSTRUCTOR_MARKERS = ("### BEGIN " + "SOLUTION", "### BEGIN HIDDEN TESTS")
HIDDEN_RE = re.compile(r"### BEGIN HIDDEN TESTS(.*?)### END HIDDEN TESTS", re.S)
STUDENT_RE = re.compile(r"[^A-Za-z0-9_.@-]+")


@dataclasses.dataclass
class LabInfo:
    lab: str
    notebook: str                       # file name nbgrader expects, e.g. demo_lab.ipynb
    points: dict[str, float]            # graded cell id -> points (from the instructor's source)
    code_tests: set[str]                # graded code cells (autograded)
    hidden: list[str]                   # lines of hidden tests (never shown to students)
    template: pathlib.Path              # lab files without notebooks + a gradebook that knows the lab
    cell_ids: set[str] = dataclasses.field(default_factory=set)  # every nbgrader cell of the lab
    given: set[str] = dataclasses.field(default_factory=set)     # read-only code cells the lab gives (helpers)
    limits: dict = dataclasses.field(default_factory=dict)       # the lab's own grading limits (lab_limits)
    watch: list[str] = dataclasses.field(default_factory=list)   # extra modules the guard records (torch, ...)
    messages: list = dataclasses.field(default_factory=list)     # the tests' own strings (test_messages)
    references: dict = dataclasses.field(default_factory=dict)  # answer -> library names sealed for it (seal.py)
    sealed: dict = dataclasses.field(default_factory=dict)      # library file -> sealed source, made once per batch
    skipped: set[str] = dataclasses.field(default_factory=set)  # given cells tagged SKIP_WHEN_GRADING (skipped_cells)


@dataclasses.dataclass
class CellGrade:
    grade_id: str
    score: float | None
    max_score: float
    reason: str
    note: str = ""                       # e.g. a warning the test wrote to stderr (it cost nothing)


@dataclasses.dataclass
class StudentResult:
    student: str
    status: str                          # graded | invalid | timeout | error
    cells: dict[str, CellGrade]
    perf: list[perf_mod.CheckResult] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    needs_review: bool = False
    wall_s: float = 0.0
    code: list[str] = dataclasses.field(default_factory=list)  # the student's own answer cells

    @property
    def score(self) -> float:
        return sum(c.score or 0.0 for c in self.cells.values()) + sum(p.score for p in self.perf)

    @property
    def max_score(self) -> float:
        return sum(c.max_score for c in self.cells.values()) + sum(p.max_score for p in self.perf)


# ---------------------------------------------------------------------------------------- inputs
# collecting submissions (folders, zips, LMS downloads, ids) lives in ``intake``; re-exported here
collect_submissions = intake.collect_submissions
student_id_from_filename = intake.student_id_from_filename


# ---------------------------------------------------------------------------------------- the lab
def _add_guard(path: pathlib.Path) -> None:
    """Make the lab's given read-only code cells (test helpers) record what they define, in the copy nbgrader
    generates the sandbox's gradebook from (see ``guard``; before each test the sandbox calls the guard itself)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("locked") and not meta.get("grade") and not meta.get("solution"):
            cell.source = guard.GIVEN_PREFIX + cell.source + guard.GIVEN_SUFFIX
    nbformat.write(nb, path)


# library modules a lab's tests lean on, watched by the guard when the lab imports them
LAB_WATCHED = {"torch": ("torch", "torch.testing", "torch.nn.functional"), "pandas": ("pandas", "pandas.testing")}


def watched_modules(nb) -> list[str]:
    """The extra modules the guard records for this lab: those of ``LAB_WATCHED`` its source imports."""
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return sorted({m for top, mods in LAB_WATCHED.items() if re.search(rf"^\s*(import|from)\s+{top}\b", code, re.M)
                   for m in mods})


def hidden_test_lines(nb) -> list[str]:
    """Every non-empty line (stripped) between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` in ``nb``."""
    return [line.strip() for cell in nb.cells for block in HIDDEN_RE.findall(cell.source)
            for line in block.splitlines() if line.strip()]


def build_template(lab: str, source_dir: pathlib.Path, workdir: pathlib.Path) -> LabInfo:
    """Generate the lab once with nbgrader into a throw-away gradebook; keep it plus the lab's files
    WITHOUT its notebooks (the solutions never enter a sandbox; the gradebook copy, which holds the
    hidden tests nbgrader re-inserts, is readable only by the sandbox's root)."""
    import nbformat
    from optcourse.course.release import nbgrader_generate

    lab_src = pathlib.Path(source_dir) / lab
    notebooks = sorted(lab_src.glob("*.ipynb"))
    if len(notebooks) != 1:
        raise ValueError(f"{lab_src} must hold exactly one notebook (found {len(notebooks)})")
    gen = workdir / "generate"
    shutil.copytree(lab_src, gen / "source" / lab, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__",
                                                                                  "outputs"))
    _add_guard(gen / "source" / lab / notebooks[0].name)
    nbgrader_generate(lab, root=gen, source="source", release=gen / "release", db_url=f"sqlite:///{gen}/gradebook.db")
    template = workdir / "template"
    shutil.copytree(gen / "source" / lab, template / "source" / lab, ignore=shutil.ignore_patterns("*.ipynb"))
    shutil.copy(gen / "gradebook.db", template / "gradebook.db")
    nb = nbformat.read(notebooks[0], as_version=4)
    # what the sandbox takes from the instructor's notebook, never from the submission: the test runner's
    # imports and helpers, and the parameters the lab is graded with
    skipped = skipped_cells(nb)
    (template / "instructor.json").write_text(json.dumps({notebooks[0].stem: {
        "prelude": tester.prelude(nb), "parameters": tester.parameters_source(nb), "skip": sorted(skipped)}}))
    limits = lab_limits(nb)
    references = seal.references_of(nb)
    points, code_tests, cell_ids, given = {}, set(), set(), set()
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade_id"):
            cell_ids.add(meta["grade_id"])
            if cell.cell_type == "code" and meta.get("locked") and not meta.get("grade") and not meta.get("solution"):
                given.add(meta["grade_id"])
        if meta.get("grade"):
            points[meta["grade_id"]] = float(meta.get("points", 0))
            if cell.cell_type == "code" and not meta.get("solution"):
                code_tests.add(meta["grade_id"])
    hidden = [line for line in hidden_test_lines(nb) if len(line) >= 6]
    messages = test_messages([c.source for c in nb.cells if c.cell_type == "code"
                              and c.get("metadata", {}).get("nbgrader", {}).get("locked")])
    return LabInfo(lab, notebooks[0].name, points, code_tests, hidden, template, cell_ids, given, limits,
                   watched_modules(nb), messages, references, seal.sealed_files(references), skipped)


SKIP_WHEN_GRADING = "skip-when-grading"   # cell tag: a given cell that only measures or plots, which no test reads


def skipped_cells(nb) -> set[str]:
    """The grade ids of the instructor's given cells tagged ``SKIP_WHEN_GRADING``: the class autograder does not run
    them (a student's graded run would spend minutes measuring what no test reads), except for the students a
    batch names in ``measure`` (the course's own test grades and measures the solution in one run). Read from the
    instructor's notebook only: a submission cannot tag a cell away. A tag on a cell that is not a locked given cell
    with a grade id is an authoring mistake, refused here."""
    found = set()
    for cell in nb.cells:
        if SKIP_WHEN_GRADING not in cell.get("metadata", {}).get("tags", []):
            continue
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type != "code" or not meta.get("locked") or meta.get("grade") or meta.get("solution") \
                or not meta.get("grade_id"):
            raise ValueError(f"a cell tagged {SKIP_WHEN_GRADING!r} must be a read-only given code cell with a grade "
                             f"id (neither a test nor an answer): {meta.get('grade_id') or cell.source[:60]!r}")
        found.add(meta["grade_id"])
    return found


FILL = r"[^\n]{0,120}?"  # what a test's f-string puts in a message: short, one line


def test_messages(sources: list[str]) -> list[re.Pattern]:
    """The failure messages the instructor's test cells (and given helpers) can produce: each string literal,
    and each f-string as a pattern whose placeholders match a short single-line value. Feedback shows a
    failure's message only when it is one of these (``instructor_message``): a notebook cannot make the
    grader show students anything else, such as the source of a hidden test."""
    import ast

    patterns = set()
    for src in sources:
        src = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        inside = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                parts = [re.escape(v.value) if isinstance(v, ast.Constant) else FILL for v in node.values]
                patterns.add("".join(parts))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in inside:
                if len(node.value.strip()) >= 3:
                    patterns.add(re.escape(node.value))
    return [re.compile(p, re.S) for p in sorted(patterns)]


def instructor_message(text: str, info: LabInfo) -> str | None:
    """``text`` when it is one of the lab's test messages and quotes no hidden test, else None."""
    text = feedback_mod.plain(text, newlines=True).strip()  # no escape, control or invisible character
    if not text or len(text) > 2000:
        return None
    for pattern in info.messages:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        if any(h in text for h in info.hidden):
            return None
        return text
    return None


LAB_LIMIT_KEYS = {"cell_timeout_s": int, "notebook_timeout_s": int, "memory_gb": float}


def lab_limits(nb) -> dict:
    """The grading limits a lab's source notebook asks for, from its metadata
    ``{"optcourse": {"grading": {"cell_timeout_s": 600, "notebook_timeout_s": 1200, "memory_gb": 6}}}``
    (a lab whose server takes minutes to start needs other limits than one of quick unit tests).
    Read from the instructor's source, never from a submission."""
    wanted = nb.metadata.get("optcourse", {}).get("grading", {})
    out = {}
    for key, value in wanted.items():
        if key == "references":  # not a limit: the library names sealed while grading (seal.references_of)
            continue
        if key not in LAB_LIMIT_KEYS:
            raise ValueError(f"unknown grading limit {key!r} in the lab's metadata (known: {sorted(LAB_LIMIT_KEYS)})")
        out[key] = LAB_LIMIT_KEYS[key](value)
        if out[key] <= 0:
            raise ValueError(f"grading limit {key} must be positive, got {value!r}")
    return out


def limits_for(info: LabInfo, cell_timeout_s: int | None = None, notebook_timeout_s: int | None = None,
               memory_gb: float | None = None, base: Limits | None = None) -> Limits:
    """Sandbox limits for this lab: what the caller set explicitly, else the lab's metadata, else ``base``."""
    base = base or Limits()
    lab = info.limits
    cell = cell_timeout_s or lab.get("cell_timeout_s") or base.cell_timeout_s
    notebook = notebook_timeout_s or lab.get("notebook_timeout_s") or base.notebook_timeout_s
    memory = int(memory_gb * (1 << 30)) if memory_gb else (int(lab["memory_gb"] * (1 << 30)) if "memory_gb" in lab
                                                              else base.memory_bytes)
    return dataclasses.replace(base, cell_timeout_s=int(cell), notebook_timeout_s=int(max(notebook, cell)),
                               memory_bytes=memory)


def precheck(sub: Submission, info: LabInfo, workdir: pathlib.Path | None = None) -> tuple[str | None, list[str]]:
    """Reject what nbgrader cannot grade, with a reason a student understands; returns (problem, answer cells).

    Repairs what would make nbgrader give up on the whole notebook: of cells that share a grade id, only
    the first keeps its nbgrader metadata (the copy is written to ``workdir`` and graded instead)."""
    import nbformat

    try:
        size = sub.path.stat().st_size
    except OSError:
        return "no notebook was submitted", []
    if size == 0:
        return "the submitted file is empty", []
    if size > MAX_NOTEBOOK_BYTES:
        return f"the notebook is {size >> 20} MB (limit {MAX_NOTEBOOK_BYTES >> 20} MB): clear large outputs and resubmit", []
    try:
        nb = nbformat.reads(sub.path.read_text(encoding="utf-8"), as_version=4)
    except Exception as exc:  # noqa: BLE001 - any parse error means the same thing to a student
        return f"the file is not a valid Jupyter notebook ({type(exc).__name__}); it may be truncated or edited outside Jupyter", []
    ids = [c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb.cells]
    ids = [i for i in ids if i]
    if not ids:
        return ("the notebook has no nbgrader cell metadata (answers copied into a new notebook, or the metadata "
                "was removed): submit the lab's own notebook with your answers"), []
    if not set(ids) & info.cell_ids:
        return f"this notebook's cells are not {info.lab}'s (is it another lab's notebook?)", []
    seen, duplicated = set(), set()
    for cell in nb.cells:
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid is None:
            continue
        if gid in seen:
            duplicated.add(gid)
            del cell.metadata["nbgrader"]  # an ordinary cell now; nbgrader would reject the whole notebook
        seen.add(gid)
    if duplicated and workdir is not None:
        sanitized = workdir / "sanitized" / f"{sub.student}.ipynb"
        sanitized.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, sanitized)
        sub.path, sub.review = sanitized, True
        sub.notes.append(f"cells shared the grade ids {sorted(duplicated)}: only the first of each counted as that cell")
    if info.given - seen:
        sub.review = True
        sub.notes.append(f"read-only cells of the lab were deleted: {sorted(info.given - seen)}")
    if any(marker in cell.source for cell in nb.cells for marker in INSTRUCTOR_MARKERS):
        sub.review = True  # graded like any notebook; whose work it is, is the instructor's call
        sub.notes.append(f"the notebook holds the instructor's source markers ({' / '.join(INSTRUCTOR_MARKERS)}), "
                         "which a released notebook never has: it looks like the instructor's source")
    code = [c.source for c in nb.cells
            if c.cell_type == "code" and c.get("metadata", {}).get("nbgrader", {}).get("solution")]
    return None, code


def _failed(exc: BaseException) -> dict:
    """The outcome of a task that raised in the grader (not in the sandbox): graded as a sandbox error."""
    return {"result": None, "timed_out": False, "wall_s": 0.0, "log": repr(exc)}


def _run_pool(tasks: dict[str, dict], workers: int):
    """The local backend: a process pool on this machine; yields ``(student, outcome)`` as sandboxes finish."""
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(grade_task, t): name for name, t in tasks.items()}
        for fut in concurrent.futures.as_completed(futures):
            try:
                outcome = fut.result()
            except Exception as exc:  # noqa: BLE001 - one broken submission never stops the batch
                outcome = _failed(exc)
            yield futures[fut], outcome


def scrub(text: str, hidden: list[str], limit: int = 400) -> str:
    """A failure message fit for a student: one line with no escape sequence or control character
    (``feedback.plain``), never a line of hidden test code, short."""
    text = feedback_mod.plain(text or "").strip()
    if any(h in text for h in hidden):
        return "(message withheld: it quoted the hidden test)"
    return text if len(text) <= limit else text[:limit] + " ..."


# errors the sandbox's Execute reports when it had to stop the kernel (inner._sandbox_execute): the message is the reason
SANDBOX_ERRORS = {"KernelDied", "KernelStuck", "NotRun", "KernelTampered"}


def _known_exception(ename: str) -> str | None:
    """``ename`` when it names one of Python's own exceptions (a notebook can name its own class anything)."""
    import builtins

    value = getattr(builtins, ename, None) if re.fullmatch(r"[A-Za-z]{1,40}", ename or "") else None
    return ename if isinstance(value, type) and issubclass(value, BaseException) else None


def _reason(ename: str, evalue: str, info: LabInfo, limits: Limits) -> str:
    if ename in ("CellTimeoutError", "TestTimeoutError", "KeyboardInterrupt"):
        return f"the cell ran longer than the {limits.cell_timeout_s} s limit and was stopped"
    if ename in SANDBOX_ERRORS:  # written by the grader's own Execute (inner.py), not by the notebook
        return scrub(evalue, info.hidden)
    name = _known_exception(ename)
    said = instructor_message(evalue, info)
    message = scrub(said, info.hidden) if said else ""
    if ename == "MemoryError":
        return "the cell ran out of memory (the sandbox limit)"
    if ename == "ReferenceNotAvailable":  # raised by a sealed library name (seal.py); only a listed name is shown
        called = [r for refs in info.references.values() for r in refs if r in (evalue or "")]
        return (f"the answer calls {called[0] if called else 'a library reference'}, the library's own implementation "
                "of a graded task, which is not available while grading (see the lab's instructions): implement it "
                "in your notebook")
    if ename == "NotImplementedError" and not message:
        return "not answered yet (NotImplementedError)"
    if message:
        return f"{name or 'Error'}: {message}"
    return f"a test failed ({name})" if name else "a test failed"


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def interpret(sub: Submission, out: dict, info: LabInfo, limits: Limits) -> StudentResult:
    """Validate the sandbox's result against the lab's trusted cell list and turn it into grades."""
    res = StudentResult(sub.student, "graded", {}, notes=list(sub.notes), wall_s=out.get("wall_s", 0.0))
    result = out.get("result")
    if out.get("timed_out"):
        res.status, res.needs_review = "timeout", True
        res.notes.append(f"the notebook ran longer than the {limits.notebook_timeout_s} s limit and was stopped; "
                         "no cell was graded")
    elif not isinstance(result, dict) or not isinstance(result.get("cells"), dict):
        res.status, res.needs_review = "error", True
        res.notes.append("the grader could not run this notebook (sandbox error); an instructor will look at it")
    elif not result.get("cells") or result.get("ok") is False:
        res.status, res.needs_review = "error", True
        res.notes.append("nbgrader could not grade this notebook; an instructor will look at it")
    result = result if isinstance(result, dict) else {}
    errors, cells, notes = _dict(result.get("errors")), _dict(result.get("cells")), _dict(result.get("notes"))
    res.needs_review |= sub.review
    guarded = sorted({n.strip() for g, v in _dict(result.get("guarded")).items() if g in info.points
                      for n in str(v)[:300].split(",")})
    if guarded:
        res.notes.append(f"the notebook replaced functions or helpers the tests use ({', '.join(guarded)}); "
                         "the grader put the originals back before the tests ran")
        res.needs_review = True
    readded = [g for g in result.get("readded") or [] if g in info.points] if isinstance(result.get("readded"), list) else []
    if readded:
        res.notes.append(f"test cells {sorted(readded)} were deleted from the notebook; the grader put them back and ran them")
    unknown = set(cells) - set(info.points)
    if unknown:
        res.notes.append(f"ignored unknown graded cells: {sorted(unknown)[:5]}")
        res.needs_review = True
    kernel_stopped = False
    for gid, points in info.points.items():
        cell = cells.get(gid) if res.status == "graded" else None
        if not isinstance(cell, dict):
            reason = "not graded: " + (res.notes[-1] if res.status != "graded" else "the cell is missing")
            res.cells[gid] = CellGrade(gid, 0.0, points, reason)
            continue
        score = cell.get("score")
        if score is None and gid not in info.code_tests:  # written answer: manual grading
            res.cells[gid] = CellGrade(gid, None, points, "graded by an instructor")
            continue
        try:
            score = float(score)
        except (TypeError, ValueError):
            score = 0.0
        score = min(max(score, 0.0), points)
        if gid in errors:
            ename, evalue = (list(errors[gid]) + ["", ""])[:2] if isinstance(errors[gid], (list, tuple)) else ("", "")
            reason = _reason(str(ename), str(evalue), info, limits)
            score = 0.0
            if ename in SANDBOX_ERRORS and not kernel_stopped:  # the first cell that tells why the kernel stopped
                res.notes.append(f"{gid}: {reason}")
                res.needs_review = kernel_stopped = True
        elif score >= points:
            reason = "passed"
        else:
            reason = "failed"
        note = ""
        if gid in notes:  # without the kernel's temporary file name of a warning
            first = re.sub(r"^\S+:\d+: ", "", str(notes[gid]))
            note = f"a warning was printed while this test ran (no points lost): {scrub(first, info.hidden, 160)}"
        res.cells[gid] = CellGrade(gid, score, points, reason, note)
    return res


# ---------------------------------------------------------------------------------------- outputs
def write_gradebook(db_url: str, info: LabInfo, source_dir: pathlib.Path, results: list[StudentResult],
                    workdir: pathlib.Path) -> None:
    """Record every result in nbgrader's gradebook (idempotent: updates in place, keeps manual grades)."""
    from nbgrader.api import Gradebook, MissingEntry
    from optcourse.course.release import nbgrader_generate

    db_file = db_url[len("sqlite:///"):] if db_url.startswith("sqlite:///") else None
    if db_file and not os.path.exists(db_file):  # a new gradebook: start from the template's (lab, no students)
        os.makedirs(os.path.dirname(db_file) or ".", exist_ok=True)
        shutil.copy(info.template / "gradebook.db", db_file)
    with Gradebook(db_url) as gb:
        try:
            known = {c.name for nb in gb.find_assignment(info.lab).notebooks for c in nb.grade_cells}
        except MissingEntry:
            known = set()
    if known != set(info.points):
        nbgrader_generate(info.lab, root=workdir, source=str(pathlib.Path(source_dir).resolve()),
                          release=workdir / "release-real", db_url=db_url)
    nb_name = pathlib.Path(info.notebook).stem
    with Gradebook(db_url) as gb, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nbgrader's own SQLAlchemy autoflush warnings on add_submission
        for res in results:
            gb.update_or_create_student(res.student)
            try:
                gb.find_submission(info.lab, res.student)
            except MissingEntry:
                gb.add_submission(info.lab, res.student)
            for gid, cell in res.cells.items():
                grade = gb.find_grade(gid, nb_name, info.lab, res.student)
                grade.auto_score = cell.score
                # a person must look where nothing scored the cell yet (a written answer before formgrader)
                grade.needs_manual_grade = cell.score is None and grade.manual_score is None
                try:
                    comment = gb.find_comment(gid, nb_name, info.lab, res.student)
                    comment.auto_comment = None if cell.reason == "passed" else cell.reason
                except MissingEntry:
                    pass
            gb.db.commit()


def write_autograded(folder: pathlib.Path, info: LabInfo, out: pathlib.Path, results: list[StudentResult],
                     keep: bool) -> None:
    """Each executed notebook into nbgrader's autograded layout (``<folder>/<student>/<lab>/<notebook>``), where the
    formgrader renders it with the gradebook's scores; a submission that was not executed (invalid) has none, and an
    earlier run's copy of it is removed so formgrader never shows a stale one. ``keep``: leave the copy in
    ``out/artifacts`` too (``--keep-autograded``)."""
    for res in results:
        dest = folder / res.student / info.lab / info.notebook
        executed = out / "artifacts" / f"{res.student}.autograded.ipynb"
        dest.unlink(missing_ok=True)
        if executed.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copyfile if keep else shutil.move)(executed, dest)


def write_csv(path: pathlib.Path, info: LabInfo, results: list[StudentResult]) -> None:
    perf_names = sorted({feedback_mod.plain(p.name) for r in results for p in r.perf})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "score", "max_score", "percent", "status", "needs_review", *info.points,
                    *[f"perf:{n}" for n in perf_names], "notes"])
        for r in sorted(results, key=lambda r: r.student):
            perf = {feedback_mod.plain(p.name): p.score for p in r.perf}
            w.writerow([feedback_mod.csv_field(r.student), f"{r.score:g}", f"{r.max_score:g}",
                        f"{100 * r.score / r.max_score:.1f}" if r.max_score else "0.0", feedback_mod.csv_field(r.status),
                        "yes" if r.needs_review else "no",
                        *["" if r.cells[g].score is None else f"{r.cells[g].score:g}" for g in info.points],
                        *[f"{perf.get(n, 0):g}" for n in perf_names], feedback_mod.csv_field(" | ".join(r.notes))])


def write_lms_csv(path: pathlib.Path, lab: str, results: list[StudentResult], missing: list[str] = ()) -> None:
    """Two columns an LMS maps on import: Moodle ("ID number" + grade item) and Canvas (match on SIS Login ID).
    A submission that was not graded normally (invalid, timed out, a sandbox error) gets an empty grade, not 0: the
    instructor decides (it is listed in the summary as needing a look); so does a roster student who submitted
    nothing (``missing``)."""
    rows = [(r.student, f"{r.score:g}" if r.status == "graded" else "") for r in results] + [(m, "") for m in missing]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["SIS Login ID", f"{lab} points"])
        for student, points in sorted(rows):
            w.writerow([feedback_mod.csv_field(student), points])


def summary_table(info: LabInfo, results: list[StudentResult]) -> str:
    """The instructor's table: one line per student, every cell plain text on one line (``feedback.plain``:
    a carriage return or an escape sequence in a message cannot rewrite or add a row)."""
    cell = feedback_mod.plain
    rows = [("student", "score", "status", "review", "first problem")]
    for r in sorted(results, key=lambda r: r.student):
        problem = next((f"{g}: {c.reason}" for g, c in r.cells.items() if c.reason not in ("passed", "graded by an instructor")), "")
        problem = "; ".join(r.notes[:1]) or problem or next((f"{p.name}: {p.reason}" for p in r.perf if not p.passed), "")
        rows.append((cell(r.student), f"{r.score:g}/{r.max_score:g}", cell(r.status), "YES" if r.needs_review else "",
                     cell(problem)[:70]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- the run
@dataclasses.dataclass
class BatchReport:
    lab: str
    results: list[StudentResult]
    out_dir: pathlib.Path
    wall_s: float
    table: str
    phases: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds: template, sandboxes, rest
    missing: list[str] = dataclasses.field(default_factory=list)        # roster logins without a submission

    @property
    def needs_review(self) -> list[str]:
        return [r.student for r in self.results if r.needs_review]

    def by_student(self) -> dict[str, StudentResult]:
        return {r.student: r for r in self.results}


def artifact_path(out: pathlib.Path, student: str, artifact: str) -> pathlib.Path:
    """Where ``grade_batch`` puts a student's copy of ``artifact`` (a path relative to the lab folder)."""
    return pathlib.Path(out) / "artifacts" / student / os.path.normpath(artifact).replace(os.sep, "__")


def grade_batch(lab: str, submissions: str | os.PathLike, out_dir: str | os.PathLike, *,
                source_dir: str | os.PathLike | None = None, db_url: str | None = None, workers: int = 2,
                limits: Limits | None = None, profile: str | None = None, progress: bool = True,
                keep_autograded: bool = False, perf_checks: list | None = None, backend: str = "local",
                ray_address: str | None = None, gpus_per_task: float = 0,
                limit_overrides: dict | None = None, roster: str | os.PathLike | None = None,
                autograded_dir: str | os.PathLike | None = None, artifacts: tuple[str, ...] = (),
                first: tuple[str, ...] = (), measure: tuple[str, ...] = ()) -> BatchReport:
    """Grade every submission of ``lab`` found at ``submissions``; write results under ``out_dir``.

    ``backend``: ``local`` (a process pool of ``workers`` sandboxes on this machine) or ``ray`` (one Ray task
    per submission, on the cluster at ``ray_address`` or a local instance of ``workers`` CPUs; see
    ``raybackend``). ``gpus_per_task`` > 0 shows the sandbox the NVIDIA devices (and asks Ray for them).
    ``limits``: the sandbox's limits as given; by default the lab's own (its metadata, ``lab_limits``) with
    ``limit_overrides`` (``cell_timeout_s``, ``notebook_timeout_s``, ``memory_gb``) applied. ``roster``: a CSV that
    maps the ids of an LMS download to logins (``roster.py``); its students without a submission are ``missing``.
    ``autograded_dir``: also write each executed notebook as ``<dir>/<student>/<lab>/<notebook>``, nbgrader's
    autograded layout, where the formgrader opens a submission for manual grading (``make autograde`` gives the
    course's ``autograder/autograded`` with the course's gradebook). ``artifacts``: files (relative to the lab folder)
    to bring back from each graded run into ``out/artifacts/<student>/`` besides those the performance checks read
    (the contract test reads the solution's recorded metrics this way). ``first``: students whose sandboxes start
    before the others' (the longest first packs a pool of a few workers best). ``measure``: students whose runs
    also execute the given cells tagged ``SKIP_WHEN_GRADING`` (``skipped_cells``)."""
    from tqdm.auto import tqdm

    from optcourse.course.release import SOLUTIONS_DIR

    start = time.monotonic()
    source_dir = pathlib.Path(source_dir or SOLUTIONS_DIR)
    out = pathlib.Path(out_dir)
    if not (source_dir / lab).is_dir():
        known = sorted(p.name for p in source_dir.iterdir() if p.is_dir() and any(p.glob("*.ipynb"))) \
            if source_dir.is_dir() else []
        raise ValueError(f"unknown lab {lab!r}: the labs in {source_dir} are {', '.join(known) or 'none'}")
    db_url = db_url or f"sqlite:///{out.resolve()}/gradebook.db"
    class_roster = roster_mod.Roster.load(roster) if roster is not None else None   # a bad roster answers at once
    missing: list[str] = []
    checks = perf_mod.checks_for(lab) if perf_checks is None else perf_checks
    artifacts = sorted({c.artifact for c in checks} | set(artifacts))
    with tempfile.TemporaryDirectory(prefix=f"autograde-{lab}-") as tmp:
        work = pathlib.Path(tmp)
        os.chmod(work, 0o700)
        subs = collect_submissions(submissions, lab, work)  # before any work: a bad intake answers at once
        if class_roster is not None:
            subs, missing = roster_mod.assign(subs, class_roster)
        out.mkdir(parents=True, exist_ok=True)
        info = build_template(lab, source_dir, work)
        limits = limits or limits_for(info, **(limit_overrides or {}))
        if gpus_per_task:
            limits = dataclasses.replace(limits, gpu=True)
        phases = {"template": time.monotonic() - start}
        results: dict[str, StudentResult] = {}
        tasks = {}
        uid_base = UID_BASE + secrets.randbelow(10_000) * 10_000  # distinct from a concurrent batch's uids
        for i, sub in enumerate(subs):
            sub.notes = list(sub.notes)
            problem, code = precheck(sub, info, work)
            if problem:
                results[sub.student] = StudentResult(
                    sub.student, "invalid", {g: CellGrade(g, 0.0, p, f"not graded: {problem}") for g, p in info.points.items()},
                    notes=[*sub.notes, problem], needs_review=True)
                continue
            tasks[sub.student] = (sub, code, {
                "template": str(info.template), "lab": lab, "student": sub.student, "path": str(sub.path.resolve()),
                "notebook": info.notebook, "artifacts": artifacts, "limits": dataclasses.asdict(limits),
                "jail_parent": str(work), "uid": uid_base + i, "keep_jail": keep_autograded or autograded_dir is not None,
                "watch": info.watch,
                "sealed": info.sealed,
                "run_all": sub.student in measure,
                "artifact_dir": str(out / "artifacts" / sub.student)})
        bar = tqdm(total=len(subs), desc=f"grading {lab}", disable=not progress, unit="nb")
        bar.update(len(results))
        ahead = [name for name in first if name in tasks]
        jobs = {name: tasks[name][2] for name in ahead + [n for n in tasks if n not in ahead]}
        if backend == "ray":
            from optcourse.autograde import raybackend

            finished = raybackend.run(jobs, info.template, workers=workers, address=ray_address,
                                      gpus_per_task=gpus_per_task, failed=_failed)
        elif backend == "local":
            finished = _run_pool(jobs, workers)
        else:
            raise ValueError(f"unknown backend {backend!r} (local or ray)")
        for name, outcome in finished:  # results come back here, to the one process that writes the gradebook
            sub, code, _ = tasks[name]
            res = interpret(sub, outcome, info, limits)
            res.code = code
            if res.status != "graded":
                (out / "logs").mkdir(exist_ok=True)
                (out / "logs" / f"{name}.log").write_text(outcome.get("log", "") + "\n" +
                                                          str((outcome.get("result") or {}).get("log", "")))
            results[name] = res
            bar.update(1)
        bar.close()
        phases["sandboxes"] = time.monotonic() - start - phases["template"]
        ordered = [results[s.student] for s in subs]
        # performance: measured here, in the trusted process, one submission at a time (no pool noise)
        if checks:
            ctx = perf_mod.PerfContext(lab=lab, profile=profile, workdir=work / "perf")
            for res in tqdm(ordered, desc="performance checks", disable=not progress, unit="nb"):
                for check in checks:
                    art = artifact_path(out, res.student, check.artifact)
                    res.perf.append(perf_mod.run_check(check, art if res.status == "graded" else None, ctx))
                    res.needs_review |= res.perf[-1].review  # out of time or memory, not a regular file, ...
        for res in ordered:  # no escape sequence or control character in anything shown from here on
            feedback_mod.clean_result(res)
        write_gradebook(db_url, info, source_dir, ordered, work)
        if autograded_dir is not None:
            write_autograded(pathlib.Path(autograded_dir), info, out, ordered, keep=keep_autograded)
    write_csv(out / "grades.csv", info, ordered)
    write_lms_csv(out / "grades_lms.csv", lab, ordered, missing)
    fb = out / "feedback"
    fb.mkdir(exist_ok=True)
    for res in ordered:
        (fb / f"{res.student}.html").write_text(feedback_mod.render(lab, res, info.hidden))
    table = summary_table(info, ordered)
    wall = time.monotonic() - start
    phases["rest"] = wall - phases["template"] - phases["sandboxes"]  # performance checks, gradebook, files
    report = BatchReport(lab, ordered, out, wall, table, {k: round(v, 2) for k, v in phases.items()}, missing)
    (out / "summary.txt").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps({
        "lab": lab, "wall_s": round(report.wall_s, 2), "phases_s": report.phases, "workers": workers,
        "backend": backend, "needs_review": report.needs_review, "missing": missing,
        "students": {r.student: {"score": r.score, "max_score": r.max_score, "status": r.status,
                                 "needs_review": r.needs_review, "notes": r.notes, "wall_s": round(r.wall_s, 1),
                                 "cells": {g: dataclasses.asdict(c) for g, c in r.cells.items()},
                                 "perf": [dataclasses.asdict(p) for p in r.perf]} for r in ordered}}, indent=2))
    return report
