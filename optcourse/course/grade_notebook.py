"""Grade one notebook against a lab's nbgrader source, in a throw-away course directory.

This is the correctness core the lab tests and the class-scale autograder share:
``autograde_notebook("lab02_quantization", path)`` copies the lab's source into a temporary course,
generates the release (which records the hidden tests and checksums in a temporary gradebook),
submits ``path`` as one student and runs nbgrader's autograde on it. It returns the score of every
graded cell, so a test can say "the solution gets full marks", "the blank student notebook gets
zero" and "this wrong answer loses task 3's points".
"""
from __future__ import annotations

import dataclasses
import pathlib
import shutil
import tempfile

from optcourse.course.release import SOLUTIONS_DIR, nbgrader_config, nbgrader_generate


@dataclasses.dataclass
class GradeReport:
    lab: str
    student: str
    cells: dict[str, tuple[float, float]]  # grade_id -> (score, max_score)
    log: str = ""

    @property
    def score(self) -> float:
        return sum(s for s, _ in self.cells.values())

    @property
    def max_score(self) -> float:
        return sum(m for _, m in self.cells.values())

    def task_scores(self, prefix: str) -> tuple[float, float]:
        """Total (score, max) of graded cells whose grade_id starts with ``prefix`` (e.g. ``test_task3``)."""
        picked = [v for k, v in self.cells.items() if k.startswith(prefix)]
        return sum(s for s, _ in picked), sum(m for _, m in picked)


def autograde_notebook(lab: str, notebook: str | pathlib.Path, student: str = "student",
                       source_dir: pathlib.Path = SOLUTIONS_DIR, timeout: int = 900) -> GradeReport:
    """Autograde ``notebook`` as ``student``'s submission of ``lab`` (nbgrader, temporary gradebook)."""
    from nbgrader.api import Gradebook
    from nbgrader.apps import NbGraderAPI

    from optcourse.autograde.stderr_notes import autograde_preprocessors

    notebook = pathlib.Path(notebook)
    lab_source = source_dir / lab
    if not lab_source.is_dir():
        raise FileNotFoundError(f"no nbgrader source for lab {lab!r} in {source_dir}")
    with tempfile.TemporaryDirectory(prefix=f"grade-{lab}-") as tmp:
        root = pathlib.Path(tmp)
        shutil.copytree(lab_source, root / "source" / lab,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "outputs"))
        submission = root / "submitted" / student / lab
        shutil.copytree(lab_source, submission,
                        ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints", "__pycache__", "outputs"))
        shutil.copy(notebook, submission / f"{lab}.ipynb")
        db_url = f"sqlite:///{root}/gradebook.db"
        config = nbgrader_config(**{
            "CourseDirectory.root": str(root),
            "CourseDirectory.source_directory": "source",
            "CourseDirectory.release_directory": "release",
            "CourseDirectory.submitted_directory": "submitted",
            "CourseDirectory.autograded_directory": "autograded",
            "CourseDirectory.feedback_directory": "feedback",
            "CourseDirectory.db_url": db_url,
            "ExecutePreprocessor.timeout": timeout,
            "Execute.timeout": timeout,
            "Autograde.autograde_preprocessors": autograde_preprocessors(),  # warnings cost no points
        })
        nbgrader_generate(lab, root=root, source="source", release=root / "release", db_url=db_url)
        api = NbGraderAPI(config=config)
        with Gradebook(db_url) as gb:
            gb.update_or_create_student(student)
        result = api.autograde(lab, student, force=True)
        if not result["success"]:
            raise RuntimeError(f"autograde failed for {lab}/{student}:\n{result.get('error') or result.get('log')}")
        cells = {}
        with Gradebook(db_url) as gb:
            submission_nb = gb.find_submission_notebook(lab, lab, student)
            for grade in submission_nb.grades:
                cells[grade.name] = (float(grade.score), float(grade.max_score))
        return GradeReport(lab, student, cells, result.get("log", ""))
