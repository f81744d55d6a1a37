"""What an instructor publishes to students: ``make student-dist`` (``python -m optcourse.course.student_dist``).

Writes ``build/student-dist/<course id>/`` and ``<course id>.zip`` beside it: the released labs, the lectures,
the student side of the course library with its assets, the set-up files (pyproject, requirements,
environment.yml, Makefile, Dockerfile's ``student`` target), the Jupyter config ``make lab`` uses, the
quiz notebook, and a student README whose lab table is computed from the solution notebooks' nbgrader
metadata. Nothing of ``solutions/``, the gradebook, hidden tests, instructor notes, the quiz bank or keys,
or ``results/``: the build scans the zip it wrote (``find_leaks``) and refuses to finish on a match.

The library part is the import closure of what students run (every lab and lecture notebook, the quiz
notebook, ``make validate``), so instructor-only modules that nothing of the student's imports stay out
without a list to keep up to date, and a library re-layout needs no change here.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
import shutil
import sys
import zipfile

import nbformat
import yaml

from optcourse.core.paths import REPO_ROOT
from optcourse.course.release import SOLUTIONS_DIR, ignored, lab_names, nbgrader_config

BUILD_DIR = REPO_ROOT / "build" / "student-dist"
LIBRARY = "optcourse"
# Folders shipped whole (minus nbgrader's ignore patterns: outputs/, checkpoints, caches, engines).
STUDENT_TREES = ("labs", "lectures", "requirements", "jupyter-config", "optcourse/assets")
# Single files. autograder/nbgrader_config.py is the course's one nbgrader config: JupyterLab's Validate
# reads its cell timeout (make lab); the rest of autograder/ is the instructor's.
STUDENT_FILES = ("pyproject.toml", "environment.yml", "Makefile", "Dockerfile", ".dockerignore", ".gitignore",
                 "autograder/nbgrader_config.py", "quiz/take_quiz.ipynb")
# What students run: these notebooks' imports and `make validate` decide which library modules ship.
ENTRY_NOTEBOOKS = ("labs/*/*.ipynb", "lectures/*.ipynb", "quiz/take_quiz.ipynb")
ENTRY_MODULES = ("optcourse.course.validate",)
README_TEMPLATE = pathlib.Path(__file__).with_name("student_README.md")
LABS_TABLE_MARK = "<!-- labs table -->"
QUIZ_BANK_DIR = REPO_ROOT / "quiz" / "bank"
# Solution lines that a lecture teaches on purpose (reviewed; the tests say when one is no longer in its
# lecture or its solution): the API call a lab then makes.
TAUGHT_IN_LECTURES = {
    "activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,": "lectures/02_tensorrt_deep_dive.ipynb",
}
# A line shorter than this (whitespace collapsed) is too generic to prove a leak: `return x`, `else:`,
# `import numpy as np` appear in any Python code.
MIN_SECRET_CHARS = 24
BLOCKS = {"### BEGIN " + "SOLUTION": ("### END SOLUTION", "solution"),  # split: the sandbox test searches files for the marker
          "### BEGIN HIDDEN TESTS": ("### END HIDDEN TESTS", "hidden test")}


def normalise(text: str) -> str:
    """Whitespace collapsed: indentation, line breaks and JSON/HTML layout cannot hide a match."""
    return " ".join(text.split())


def secret_and_public_lines(nb: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """((kind, line) for each line inside a solution or hidden-test block, [every line outside them]) of an
    nbgrader source notebook; lines are stripped, the markers themselves belong to neither."""
    secret, public, end, kind = [], [], None, ""
    for cell in nb["cells"]:
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        for line in source.splitlines():
            stripped = line.strip()
            if end is None and any(stripped.startswith(begin) for begin in BLOCKS):
                end, kind = next(BLOCKS[b] for b in BLOCKS if stripped.startswith(b))
            elif end is not None and stripped.startswith(end):
                end = None
            elif end is not None:
                secret.append((kind, stripped))
            else:
                public.append(stripped)
        end = None  # a block never spans cells
    return secret, public


# ---------------------------------------------------------------------------------------------------
# The library's import closure
# ---------------------------------------------------------------------------------------------------

def module_file(name: str, root: pathlib.Path = REPO_ROOT) -> pathlib.Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(source: str, package: str = "") -> set[str]:
    """Every dotted name an import statement of ``source`` may load (``from a import b``: a and a.b),
    function-level imports included; ``package``: the importing module's package, for relative imports."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            anchor = package.rsplit(".", node.level - 1)[0] if node.level else ""
            base = ".".join(part for part in (anchor, node.module or "") if part)
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


def notebook_code(path: pathlib.Path) -> str:
    """The notebook's code cells as plain Python (IPython's magics and shell escapes translated)."""
    from IPython.core.inputtransformer2 import TransformerManager

    transform = TransformerManager().transform_cell
    nb = nbformat.read(path, as_version=4)
    return "\n".join(transform(cell.source) for cell in nb.cells if cell.cell_type == "code")


def library_closure(notebooks: list[pathlib.Path], modules: tuple[str, ...] = ENTRY_MODULES,
                    root: pathlib.Path = REPO_ROOT) -> set[pathlib.Path]:
    """The library's source files that the notebooks and modules import, directly or through each other
    (with every package __init__ on the way, as Python runs them)."""
    pending = set(modules)
    for path in notebooks:
        pending |= imported_names(notebook_code(path))
    seen, files = set(), set()
    while pending:
        name = pending.pop()
        if name in seen or not (name == LIBRARY or name.startswith(LIBRARY + ".")):
            continue
        seen.add(name)
        parts = name.split(".")
        pending |= {".".join(parts[:i]) for i in range(1, len(parts))}
        path = module_file(name, root)
        if path is None:  # `from optcourse.measure.bench import Timer`: a name in a module, not a module
            continue
        files.add(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        pending |= imported_names(path.read_text(), package)
    return files


# ---------------------------------------------------------------------------------------------------
# What ships, and the README
# ---------------------------------------------------------------------------------------------------

def student_files(root: pathlib.Path = REPO_ROOT) -> list[pathlib.Path]:
    """Every repository file the distribution holds, relative to ``root`` (the README is written apart)."""
    files = {pathlib.Path(name) for name in STUDENT_FILES}
    for tree in STUDENT_TREES:
        files |= {p.relative_to(root) for p in (root / tree).rglob("*")
                  if p.is_file() and not ignored(p.relative_to(root / tree))}
    notebooks = [p for pattern in ENTRY_NOTEBOOKS for p in sorted(root.glob(pattern))]
    files |= {p.relative_to(root) for p in library_closure(notebooks, root=root)}
    return sorted(files)


@dataclasses.dataclass
class LabGrading:
    lab: str
    title: str
    auto_points: float
    manual_points: float
    test_cells: int
    hidden_test_cells: int
    cell_timeout_s: int | None
    grader_points: float = 0.0     # the grader's own measurements of an artifact (optcourse.autograde.perf)

    @property
    def points(self) -> float:
        return self.auto_points + self.manual_points + self.grader_points


def lab_grading(lab: str) -> LabGrading:
    """Points and grading of a lab, from its solution notebook's nbgrader metadata (what the grader uses)."""
    from optcourse.autograde import perf
    from optcourse.autograde.pipeline import lab_limits

    nb = nbformat.read(SOLUTIONS_DIR / lab / f"{lab}.ipynb", as_version=4)
    auto = manual = 0.0
    tests = hidden = 0
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if not (meta.get("grade") or meta.get("task")):
            continue
        points = float(meta.get("points", 0))
        if cell.cell_type == "code" and not meta.get("solution"):
            auto += points
            tests += 1
            hidden += "### BEGIN HIDDEN TESTS" in cell.source
        else:  # a written answer or a task: an instructor reads it
            manual += points
    first = nb.cells[0].source.splitlines()[0] if nb.cells else lab
    return LabGrading(lab, first.lstrip("# ").strip(), auto, manual, tests, hidden,
                      lab_limits(nb).get("cell_timeout_s"), sum(float(c.points) for c in perf.checks_for(lab)))


def labs_table(labs: list[str]) -> str:
    rows = ["| lab | total points | automatic tests (points) | measured by the grader (points) | "
            "read by an instructor (points) | test cells with hidden tests | time limit per cell |",
            "|---|---|---|---|---|---|---|"]
    for g in map(lab_grading, labs):
        limit = f"{g.cell_timeout_s} s" if g.cell_timeout_s else "the grader's default"
        rows.append(f"| `{g.lab}`: {g.title} | **{g.points:g}** | {g.auto_points:g} | {g.grader_points:g} | "
                    f"{g.manual_points:g} | "
                    f"{g.hidden_test_cells} of {g.test_cells} | {limit} |")
    return "\n".join(rows)


def student_readme(labs: list[str]) -> str:
    template = README_TEMPLATE.read_text()
    if LABS_TABLE_MARK not in template:
        raise ValueError(f"{README_TEMPLATE} lost its {LABS_TABLE_MARK} line")
    return template.replace(LABS_TABLE_MARK, labs_table(labs))


# ---------------------------------------------------------------------------------------------------
# The leak scan
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Secret:
    kind: str    # solution, hidden test, quiz key
    origin: str  # where it comes from, relative to the repository
    text: str    # normalised


@dataclasses.dataclass(frozen=True)
class Leak:
    file: str
    secret: Secret


def quiz_key_texts() -> list[tuple[str, str]]:
    """(origin, text) of each answer the quiz bank holds: the correct options and the explanations."""
    texts = []
    for path in sorted(QUIZ_BANK_DIR.glob("*.yaml")):
        for question in yaml.safe_load(path.read_text())["questions"]:
            origin = f"{path.relative_to(REPO_ROOT)}#{question['id']}"
            texts += [(origin, choice["text"]) for choice in question.get("choices", []) if choice.get("correct")]
            texts += [(origin, question["explanation"])] if question.get("explanation") else []
    return texts


def secrets(public_library: set[pathlib.Path]) -> list[Secret]:
    """Every distinctive line of the solution and hidden-test blocks, and every quiz answer. A line that
    is public by design is no proof of a leak and is left out: given code and visible tests outside the
    blocks (nbgrader releases them), the library modules that ship (a solution calls the library or
    repeats one of its lines; the grader keeps references out of reach), and the reviewed lines in
    TAUGHT_IN_LECTURES. These public texts are the repository's own, so a line planted into the
    distribution's copy of a module is still found; a lecture is no excuse for any other line."""
    found = []
    public = [p.read_text() for p in sorted(public_library)] + list(TAUGHT_IN_LECTURES)
    for lab in lab_names():
        for path in sorted((SOLUTIONS_DIR / lab).glob("*.ipynb")):
            secret_lines, public_lines = secret_and_public_lines(json.loads(path.read_text()))
            public += public_lines
            found += [Secret(kind, str(path.relative_to(REPO_ROOT)), normalise(line)) for kind, line in secret_lines]
    found += [Secret("quiz key", origin, normalise(text)) for origin, text in quiz_key_texts()]
    public_text = normalise("\n".join(public))
    unique = {s.text: s for s in found if len(s.text) >= MIN_SECRET_CHARS and s.text not in public_text}
    return list(unique.values())


def json_strings(value) -> list[str]:
    """Every string in a parsed JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in json_strings(key) + json_strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in json_strings(item)]
    return []


def readable_text(name: str, data: bytes) -> str | None:
    """A file's text for the scan: JSON (notebooks, configs) also as its strings, so escaped quotes and
    line breaks cannot hide a line; None for binary files (model weights)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if name.endswith((".ipynb", ".json")):
        try:
            return text + "\n" + "\n".join(json_strings(json.loads(text)))
        except json.JSONDecodeError:
            return text
    return text


def distribution_contents(dist: pathlib.Path) -> dict[str, bytes]:
    """{relative path: bytes} of a distribution folder or zip."""
    if dist.is_dir():
        return {str(p.relative_to(dist)): p.read_bytes() for p in sorted(dist.rglob("*")) if p.is_file()}
    with zipfile.ZipFile(dist) as archive:
        return {info.filename.split("/", 1)[1]: archive.read(info) for info in archive.infolist() if not info.is_dir()}


def find_leaks(dist: pathlib.Path, known: list[Secret]) -> list[Leak]:
    leaks = []
    for name, data in distribution_contents(dist).items():
        text = readable_text(name, data)
        if text is None:
            continue
        text = normalise(text)
        leaks += [Leak(name, s) for s in known if s.text in text]
    return leaks


# ---------------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------------

def build(out_dir: pathlib.Path = BUILD_DIR) -> tuple[pathlib.Path, pathlib.Path]:
    """Write the distribution folder and its zip under ``out_dir``; (folder, zip)."""
    name = nbgrader_config().CourseDirectory.course_id
    folder, archive = out_dir / name, out_dir / f"{name}.zip"
    if folder.exists():
        shutil.rmtree(folder)  # a build output: every file in it comes from this function
    files = student_files()
    for rel in files:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, folder / rel)
    (folder / "README.md").write_text(student_readme(lab_names()))
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, f"{name}/{path.relative_to(folder)}")
    return folder, archive


def shipped_library(dist: pathlib.Path) -> set[pathlib.Path]:
    """The repository's copies of the library sources a distribution folder holds."""
    return {REPO_ROOT / p.relative_to(dist) for p in (dist / LIBRARY).rglob("*.py")}


def main(argv: list[str] | None = None) -> int:
    folder, archive = build()
    known = secrets(shipped_library(folder))
    leaks = find_leaks(archive, known)
    if leaks:
        for leak in leaks[:20]:
            print(f"LEAK {leak.file}: {leak.secret.kind} from {leak.secret.origin}: {leak.secret.text[:120]}",
                  file=sys.stderr)
        archive.unlink()
        print(f"error: {len(leaks)} solution, hidden-test or quiz-key lines in the distribution; zip removed",
              file=sys.stderr)
        return 1
    count = sum(1 for p in folder.rglob("*") if p.is_file())
    print(f"student distribution: {folder.relative_to(REPO_ROOT)}/ ({count} files), {archive.relative_to(REPO_ROOT)}; "
          f"none of {len(known)} solution, hidden-test and quiz-key lines found in it")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
