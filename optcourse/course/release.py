"""Generate the student notebooks (labs/) from the instructor's source (solutions/) with nbgrader.

``python -m optcourse.course.release`` (``make release``) regenerates every lab; ``generate(..., dest)``
writes into another folder, which the drift test uses to check that labs/ is exactly nbgrader's
output. The gradebook for this step is a throw-away one: releasing must not touch grades. Releasing
over a working copy never deletes a student's answers (``install``).
"""
from __future__ import annotations

import filecmp
import fnmatch
import functools
import json
import pathlib
import shutil
import sys
import tempfile
import time

from optcourse.core.paths import AUTOGRADER_DIR, REPO_ROOT, apply_offline_environment

SOLUTIONS_DIR = REPO_ROOT / "solutions"
LABS_DIR = REPO_ROOT / "labs"


def _ask_alembic_once() -> None:
    """nbgrader stamps every new gradebook with its schema's revision, which it asks a new ``alembic heads``
    process for each time (2-5 s on 2 cores). The answer is a constant of the installed nbgrader: ask once
    per process (the grader builds a gradebook per batch, the tests many batches)."""
    import nbgrader.api

    if not hasattr(nbgrader.api.get_alembic_version, "cache_info"):
        nbgrader.api.get_alembic_version = functools.lru_cache(maxsize=1)(nbgrader.api.get_alembic_version)


def lab_names(source: pathlib.Path = SOLUTIONS_DIR) -> list[str]:
    return sorted(p.name for p in source.iterdir() if p.is_dir() and any(p.glob("*.ipynb")))


def nbgrader_config(**overrides):
    """The course's nbgrader config (autograder/nbgrader_config.py) with ``overrides`` applied."""
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(AUTOGRADER_DIR)).load_config()
    extra = Config()
    for key, value in overrides.items():
        section, name = key.split(".")
        extra[section][name] = value
    config.merge(extra)
    return config


def nbgrader_generate(lab: str, *, release: pathlib.Path, db_url: str, root: pathlib.Path | None = None,
                      source: str | None = None) -> None:
    """nbgrader's generate_assignment of ``lab`` with the course's config: the student version into ``release``, its
    cells, points and hidden tests into the gradebook at ``db_url``. The one place every nbgrader course the
    project makes (the release, the grader's template, the class gradebook) is set up."""
    from nbgrader.apps import NbGraderAPI

    from optcourse.core.paths import apply_offline_environment

    apply_offline_environment()  # also puts this interpreter's bin on PATH: nbgrader's gradebook runs `alembic`
    _ask_alembic_once()
    overrides = {"CourseDirectory.release_directory": str(release), "CourseDirectory.db_url": db_url}
    if root is not None:
        overrides["CourseDirectory.root"] = str(root)
    if source is not None:
        overrides["CourseDirectory.source_directory"] = source
    result = NbGraderAPI(config=nbgrader_config(**overrides)).generate_assignment(lab, force=True)
    if not result["success"]:
        raise RuntimeError(f"nbgrader could not generate {lab} (gradebook {db_url}):\n"
                           f"{result.get('error') or result.get('log')}")


def generate(labs: list[str] | None = None, dest: pathlib.Path = LABS_DIR) -> list[str]:
    """Run nbgrader's generate_assignment for each lab into ``dest``; returns the labs generated."""
    labs = labs or lab_names()
    with tempfile.TemporaryDirectory() as tmp:
        staging = pathlib.Path(tmp) / "release"
        for lab in labs:
            nbgrader_generate(lab, release=staging, db_url=f"sqlite:///{tmp}/gradebook.db")
            for kept in install(staging / lab, dest / lab):
                print(f"the previous version held work the release does not: kept as {lab}/{kept.name}",
                      file=sys.stderr)
    return labs


@functools.cache
def ignore_patterns() -> tuple[str, ...]:
    return tuple(nbgrader_config().CourseDirectory.ignore)


def ignored(relative: pathlib.Path) -> bool:
    """Whether nbgrader leaves this path out of a release (outputs/, checkpoints, caches, engines...)."""
    return any(fnmatch.fnmatchcase(part, pattern) for part in relative.parts for pattern in ignore_patterns())


def student_work(current: pathlib.Path, released: pathlib.Path) -> bool:
    """Whether replacing ``current`` with ``released`` would lose something the release does not have: in a
    notebook, a solution cell or a cell of one's own whose text the new release lacks; any other file
    that differs."""
    if _committed(current) == current.read_bytes():  # what the repository already holds is no one's unsaved work
        return False
    if current.suffix != ".ipynb":
        return not filecmp.cmp(current, released, shallow=False)
    try:
        cells = json.loads(current.read_text())["cells"]
    except (ValueError, KeyError):
        return True  # unreadable: keep it, whatever it is
    new_sources = {"".join(c["source"]) for c in json.loads(released.read_text())["cells"]}
    own = [c for c in cells if c.get("metadata", {}).get("nbgrader", {}).get("solution")
           or "nbgrader" not in c.get("metadata", {})]
    return any("".join(c["source"]) not in new_sources for c in own)


def _committed(path: pathlib.Path) -> bytes | None:
    """The committed content of ``path`` in its git repository (None outside one, or if not committed)."""
    import subprocess

    try:
        top = subprocess.run(["git", "-C", str(path.parent), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=True).stdout.strip()
        relative = path.resolve().relative_to(pathlib.Path(top).resolve()).as_posix()
        return subprocess.run(["git", "-C", top, "show", f"HEAD:{relative}"], capture_output=True,
                              check=True).stdout
    except (OSError, ValueError, subprocess.CalledProcessError):
        return None


def install(staged: pathlib.Path, target: pathlib.Path) -> list[pathlib.Path]:
    """Copy a freshly generated lab over ``target`` file by file. Never deletes: files the release does
    not have stay, and a file holding a student's work is first copied beside it as
    ``<name>.before-release-<UTC time><suffix>``; returns those copies."""
    kept, stamp = [], time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for source in sorted(p for p in staged.rglob("*") if p.is_file()):
        destination = target / source.relative_to(staged)
        if destination.is_file() and student_work(destination, source):
            backup = destination.with_name(f"{destination.stem}.before-release-{stamp}{destination.suffix}")
            shutil.copy2(destination, backup)
            kept.append(backup)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    return kept


def main(argv: list[str] | None = None) -> int:
    """``python -m optcourse.course.release [LAB ...]``: regenerate the named labs (default: every lab)."""
    names = list(sys.argv[1:] if argv is None else argv)
    if not SOLUTIONS_DIR.is_dir():  # the student distribution: labs/ is already the release
        print(f"error: no {SOLUTIONS_DIR.name}/ here: releasing regenerates labs/ from the instructor's "
              "solutions and runs in the instructor's repository", file=sys.stderr)
        return 2
    unknown = sorted(set(names) - set(lab_names()))
    if unknown:
        print(f"error: unknown lab(s) {', '.join(unknown)}; labs: {', '.join(lab_names())}", file=sys.stderr)
        return 2
    apply_offline_environment()  # nbgrader's jupyter folders inside the workspace
    labs = generate(names or None)
    for lab in labs:
        print(f"released {lab} -> {(LABS_DIR / lab).relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
