"""Generate the student notebooks (labs/) from the instructor's source (solutions/) with nbgrader.

``python -m optcourse.course.release`` (``make release``) regenerates every lab; ``generate(..., dest)``
writes into another folder, which the drift test uses to check that labs/ is exactly nbgrader's
output. The gradebook for this step is a throw-away one: releasing must not touch grades.
"""
from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile

from optcourse.core.paths import AUTOGRADER_DIR, REPO_ROOT, apply_offline_environment

SOLUTIONS_DIR = REPO_ROOT / "solutions"
LABS_DIR = REPO_ROOT / "labs"


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


def generate(labs: list[str] | None = None, dest: pathlib.Path = LABS_DIR) -> list[str]:
    """Run nbgrader's generate_assignment for each lab into ``dest``; returns the labs generated."""
    from nbgrader.apps import NbGraderAPI

    labs = labs or lab_names()
    with tempfile.TemporaryDirectory() as tmp:
        staging = pathlib.Path(tmp) / "release"
        config = nbgrader_config(**{
            "CourseDirectory.release_directory": str(staging),
            "CourseDirectory.db_url": f"sqlite:///{tmp}/gradebook.db",
        })
        api = NbGraderAPI(config=config)
        for lab in labs:
            result = api.generate_assignment(lab, force=True)
            if not result["success"]:
                raise RuntimeError(f"nbgrader could not generate {lab}:\n{result.get('error') or result.get('log')}")
            target = dest / lab
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(staging / lab, target)
    return labs


def main(argv: list[str] | None = None) -> int:
    """``python -m optcourse.course.release [LAB ...]``: regenerate the named labs (default: every lab)."""
    names = list(sys.argv[1:] if argv is None else argv)
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
