"""The grading step that runs INSIDE the sandbox (``python -m optcourse.autograde.inner /grading``).

It runs as root of the sandbox's own mount, network and PID namespaces, chroot'ed into a tree that
holds only system files, the Python environment, the course library and ``/grading`` (one
student's copy of the course: the lab's files without its notebooks, a throw-away gradebook that
knows this lab's cells and hidden tests, and this one submission). nbgrader's autograde runs here
and starts the student's kernel through ``optcourse.autograde.kernel`` (unprivileged uid, rlimits).
It writes ``/grading/result.json`` with each graded cell's score and its error name and message;
the trusted parent validates that, scrubs the messages and writes the real gradebook.
"""
from __future__ import annotations

import json
import os
import stat
import sys
import traceback

MAX_ARTIFACT_BYTES = 64 << 20


def _config(root: str, job: dict):
    from traitlets.config import Config

    c = Config()
    c.CourseDirectory.root = root
    c.CourseDirectory.course_id = "optcourse-sandbox"
    c.CourseDirectory.source_directory = "source"
    c.CourseDirectory.submitted_directory = "submitted"
    c.CourseDirectory.autograded_directory = "autograded"
    c.CourseDirectory.feedback_directory = "feedback"
    c.CourseDirectory.db_url = f"sqlite:///{root}/gradebook.db"
    c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", ".*"]
    c.Execute.kernel_name = "optcourse-sandbox"
    c.Execute.timeout = int(job["cell_timeout"])
    c.Execute.interrupt_on_timeout = True
    c.Execute.startup_timeout = 120
    c.Execute.raise_on_iopub_timeout = False  # a cell that forks or floods must fail alone, not the notebook
    c.Execute.iopub_timeout = 10
    c.ExecutePreprocessor.kernel_name = "optcourse-sandbox"
    c.Autograde.create_student = True
    return c


def _errors(nb_path: str) -> dict:
    """grade_id -> (ename, evalue) of the first error output of each graded cell of the autograded notebook."""
    import nbformat

    errors = {}
    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if not meta.get("grade") or cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errors[meta.get("grade_id")] = (str(out.get("ename", ""))[:200], str(out.get("evalue", ""))[:2000])
                break
    return errors


def _copy_artifacts(src_dir: str, names: list[str], dest: str) -> dict:
    """Copy the registered artifacts out of the kernel's folder, refusing links and oversize files."""
    copied = {}
    os.makedirs(dest, exist_ok=True)
    for name in names:
        norm = os.path.normpath(name)
        if norm.startswith("..") or os.path.isabs(norm):
            continue
        path = os.path.join(src_dir, norm)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            copied[name] = f"missing ({exc.strerror})"
            continue
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                copied[name] = "not a regular file"
                continue
            if st.st_size > MAX_ARTIFACT_BYTES:
                copied[name] = f"too large ({st.st_size} bytes)"
                continue
            out = os.path.join(dest, norm.replace(os.sep, "__"))
            with open(out, "wb") as g:
                g.write(f.read(MAX_ARTIFACT_BYTES + 1))
            copied[name] = "ok"
    return copied


def _kill_uid(uid: int) -> None:
    """Kill every process the kernel's user left behind (forks, daemons) before reading its folder.

    A child that takes the same uid may ``kill(-1, SIGKILL)``: that signals every process of that
    user but itself, which also stops fork bombs that race a process-by-process kill.
    """
    import signal

    for _ in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)


def main(root: str) -> int:
    import warnings

    warnings.simplefilter("ignore")  # nbgrader's SQLAlchemy warnings would only clutter the sandbox log
    with open(os.path.join(root, "job.json")) as f:
        job = json.load(f)
    lab, student = job["lab"], job["student"]
    result = {"lab": lab, "student": student, "ok": False, "cells": {}, "errors": {}, "log": "", "artifacts": {}}
    try:
        from nbgrader.api import Gradebook
        from nbgrader.apps import NbGraderAPI

        api = NbGraderAPI(config=_config(root, job))
        with Gradebook(f"sqlite:///{root}/gradebook.db") as gb:
            gb.update_or_create_student(student)
        out = api.autograde(lab, student, force=True, create=True)
        result["log"] = (out.get("log") or "")[-20000:]
        if not out["success"]:
            result["log"] += "\n" + str(out.get("error") or "")[-20000:]
        with Gradebook(f"sqlite:///{root}/gradebook.db") as gb:
            for nb in gb.find_submission(lab, student).notebooks:
                for grade in nb.grades:
                    result["cells"][grade.name] = {
                        "score": None if grade.auto_score is None else float(grade.auto_score),
                        "max": float(grade.max_score), "notebook": nb.name}
        _kill_uid(int(os.environ["OPTCOURSE_SANDBOX_UID"]))
        graded_dir = os.path.join(root, "autograded", student, lab)
        for name in os.listdir(graded_dir):
            if name.endswith(".ipynb"):
                result["errors"].update(_errors(os.path.join(graded_dir, name)))
        result["artifacts"] = _copy_artifacts(graded_dir, job.get("artifacts", []), os.path.join(root, "artifacts"))
        result["ok"] = bool(out["success"])
    except Exception:  # noqa: BLE001 - report, the parent decides
        result["log"] += "\n" + traceback.format_exc()[-20000:]
    tmp = os.path.join(root, "result.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, os.path.join(root, "result.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/grading"))
