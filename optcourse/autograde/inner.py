"""The grading step that runs INSIDE the sandbox (``python -m optcourse.autograde.inner /grading``).

It runs as root of the sandbox's own mount, network and PID namespaces, chroot'ed into a tree that
holds only system files, the Python environment, the course library and ``/grading`` (one
student's copy of the course: the lab's files without its notebooks, a throw-away gradebook that
knows this lab's cells and hidden tests, and this one submission). nbgrader's autograde runs here
and starts the student's kernel through ``optcourse.autograde.kernel`` (unprivileged uid, rlimits); the test
cells do not run in that kernel but in the trusted runner ``tester.py``, which calls into the kernel
through ``remote.py``.
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


GRADER_ERRORS = ("NotRun", "KernelTampered", "KernelDied", "KernelStuck")
_stopped_cells: dict[str, tuple[str, str]] = {}  # grade_id -> the error the grader itself wrote (not the notebook)


def _grader_error(cell, ename: str, evalue: str):
    """An error output written by the grader; recorded so that a notebook raising an exception of the same name
    cannot pass its own message off as the grader's."""
    from nbformat.v4 import new_output

    gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
    if gid:
        _stopped_cells[gid] = (ename, evalue)
    return new_output("error", ename=ename, evalue=evalue, traceback=[])


def _sandbox_execute():
    """nbgrader's Execute preprocessor, hardened for hostile notebooks (a class made on demand: nbgrader is
    imported only inside the sandbox).

    * A kernel that dies (``os._exit``, ``exit()``, a segfault) ends nbgrader's whole run in plain nbgrader,
      losing the cells that had passed; here the cell that killed it fails with ``KernelDied`` and every
      later cell fails with ``NotRun`` without executing, and the grades of earlier cells stand.
    * After a cell failed or timed out, the processes it left are killed (a fork bomb's copies of the kernel
      share its sockets); a kernel that ignored the interrupt (it catches ``KeyboardInterrupt``) or that
      left a flood of processes is stopped the same way as a dead one (``KernelStuck``), instead of
      costing every later cell a full time-out or answering from a copy's state.
    """
    from nbclient.exceptions import DeadKernelError
    from nbformat.v4 import new_output
    from nbgrader.preprocessors import Execute

    class SandboxExecute(Execute):
        _stopped: str | None = None
        _skip: set = frozenset()   # grade ids of given cells not run in this sandbox (skipped_cells)

        def preprocess(self, nb, resources=None, km=None):
            # the kernel runs in its own folder: the one nbgrader reads and writes (the notebook with the hidden
            # tests) stays root's
            self._stopped = None
            meta = (resources if resources is not None else {}).setdefault("metadata", {})
            original = meta.get("path")
            if original:
                meta["path"] = _student_workdir(original)
            instructor = _INSTRUCTOR.get((resources or {}).get("nbgrader", {}).get("notebook"), {})
            self._tester, self._told_prelude = _tester_for(instructor, meta["path"]), False
            self._skip = set() if _JOB.get("run_all") else set(instructor.get("skip", []))
            inject_parameters(nb, instructor.get("parameters", ""))
            try:
                return super().preprocess(nb, resources, km)
            finally:
                meta["path"] = original
                if self._tester is not None:
                    self._tester.stop()

        def _run_test(self, cell) -> str:
            """Run a test cell in the trusted runner (``tester.py``) with the kernel answering its questions, and
            write what it printed and how it failed as the cell's outputs (what nbgrader scores). Returns what
            became of the kernel: "ok", "died" or "stuck" (it did not come back after the test was stopped)."""
            from jupyter_core.utils import ensure_async, run_sync

            from optcourse.autograde.remote import serve_expression

            sent = []

            def start_agent(address, token):
                sent.append(self.kc.execute("", silent=True, store_history=False,
                                            user_expressions={"serve": serve_expression(address, token)}))

            gid = cell.metadata.get("nbgrader", {}).get("grade_id", "test")
            report = self._tester.run(cell.source, gid, float(self.timeout), start_agent)
            outputs = [new_output("stream", name=stream, text=report[stream])
                       for stream in ("stdout", "stderr") if report.get(stream)]
            if report.get("error"):
                err = report["error"]
                outputs.append(new_output("error", ename=str(err.get("ename", "Error")),
                                          evalue=str(err.get("evalue", "")), traceback=list(err.get("traceback", []))))
            if self._tester.prelude_failed and not self._told_prelude:  # an instructor's import that failed here
                self._told_prelude = True
                outputs.insert(0, new_output("stream", name="stdout", text=(
                    f"{PRELUDE_NOTE} {'; '.join(self._tester.prelude_failed)[:1000]}\n")))
            cell.outputs = outputs
            if not sent:
                return "ok"
            if not self._kernel_alive():  # the notebook's function ended Python (a crash, os._exit)
                return "died"
            if report.get("timed_out"):  # the kernel may still be inside the notebook's function
                run_sync(ensure_async)(self.km.interrupt_kernel())
            try:  # nbclient waits one cell limit, interrupts, and gives None when nothing came
                reply = run_sync(self.async_wait_for_reply)(sent[0])
            except Exception:  # noqa: BLE001 - a kernel that cannot answer any more
                reply = None
            if reply is None:
                return "stuck" if self._kernel_alive() else "died"
            return "ok"

        def _kernel_alive(self) -> bool:
            from jupyter_core.utils import ensure_async, run_sync

            return bool(run_sync(ensure_async)(self.km.is_alive()))

        def _guard_kernel(self) -> tuple[bool, str]:
            """Put the kernel back as the instructor gave it (``guard.before_test``), through an execute
            request's ``user_expressions``: IPython evaluates those without its input or AST transformers, so
            nothing the notebook registered there can skip the call. Returns (ok, what was put back)."""
            from jupyter_core.utils import run_sync

            from optcourse.autograde.guard import BEFORE_TEST

            try:
                msg_id = self.kc.execute("", silent=True, store_history=False, user_expressions={"guard": BEFORE_TEST})
                reply = run_sync(self.async_wait_for_reply)(msg_id)
            except Exception as exc:  # noqa: BLE001 - a kernel that cannot answer is not trusted for a test
                return False, type(exc).__name__
            content = (reply or {}).get("content", {})
            value = content.get("user_expressions", {}).get("guard", {})
            if content.get("status") != "ok" or value.get("status") != "ok":
                return False, str(value.get("ename") or content.get("ename") or "no answer")[:100]
            text = str(value.get("data", {}).get("text/plain", "''"))
            return True, text.strip("'\"")[:300]

        def preprocess_cell(self, cell, resources, index):
            if cell.cell_type != "code":
                return cell, resources
            if self._stopped:
                cell.outputs = [_grader_error(cell, "NotRun", self._stopped)]
                return cell, resources
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if meta.get("grade_id") in self._skip and not meta.get("grade") and not meta.get("solution"):
                cell.outputs = [new_output("stream", name="stdout", text=SKIPPED_NOTE)]
                return cell, resources
            uid = int(os.environ["OPTCOURSE_SANDBOX_UID"])
            running_before = _processes(uid)
            restored = ""
            if cell.get("metadata", {}).get("nbgrader", {}).get("grade") and self.kc is not None:
                ok, restored = self._guard_kernel()
                if not ok:  # the test does not run in a kernel the grader cannot put back
                    cell.outputs = [_grader_error(cell, "KernelTampered", (
                        "the grader could not check the kernel before this test (the notebook changed how the kernel "
                        f"runs code: {restored}); the test was not run"))]
                    return cell, resources
            try:
                if not _is_test(cell):
                    cell, resources = super().preprocess_cell(cell, resources, index)
                elif (kernel_state := self._run_test(cell)) == "died":
                    raise DeadKernelError("the kernel died during a test")
                elif kernel_state == "stuck":
                    cell.outputs.append(new_output("error", ename="CellTimeoutError", evalue="", traceback=[]))
                if restored:  # said first in the cell's output; the parent reports it to the instructor
                    from optcourse.autograde.guard import MARK

                    cell.outputs.insert(0, new_output("stream", name="stdout", text=f"{MARK} {restored}\n"))
            except DeadKernelError:
                cell.outputs.append(_grader_error(cell, "KernelDied", (
                    "the kernel died while this cell ran (the code ended Python: os._exit, exit(), a crash)")))
                self._stopped = "not run: the kernel died in an earlier cell"
                return cell, resources
            names = [o.get("ename") for o in cell.outputs if o.get("output_type") == "error"]
            if not names:
                return cell, resources
            # a failed or stopped cell: what it left running is garbage, and copies of the kernel made by
            # os.fork share its sockets (they answer later cells from their own state); what ran before it
            # stays (a server started by an earlier cell), unless the kernel itself is stopped
            stuck = "CellTimeoutError" in names and "KeyboardInterrupt" not in names  # a test: set just above
            kernel = getattr(getattr(self.km.provisioner, "process", None), "pid", None)
            strays = _kill_strays(uid, spare=None if stuck else kernel, keep=set() if stuck else running_before)
            if stuck:
                why = (f"the cell ran longer than the {self.timeout} s limit and did not stop when interrupted "
                       "(it catches KeyboardInterrupt?)")
            elif strays >= FORK_FLOOD:
                _kill_strays(uid, spare=None)
                why = f"the cell started {strays} processes (a fork bomb?)"
            else:
                return cell, resources
            cell.outputs = [_grader_error(cell, "KernelStuck", why + "; the kernel was stopped")]
            self._stopped = "not run: the kernel was stopped in an earlier cell"
            return cell, resources

    return SandboxExecute


def _is_test(cell) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return cell.get("cell_type") == "code" and bool(meta.get("grade")) and not meta.get("solution")


_INSTRUCTOR: dict[str, dict] = {}  # notebook name -> {"prelude": [...], "parameters": source, "skip": [...]} (main)
_JOB: dict = {}                     # this sandbox's job.json (set by main)
SKIPPED_NOTE = "[autograder] not run while grading: this cell only measures or plots, and no test reads it\n"


def _tester_for(instructor: dict, workdir: str):
    """The trusted runner for the notebook being graded; its namespace starts from the instructor's imports and
    helpers (``instructor.json``, written by the trusted parent from the source notebook), never the
    submission's."""
    from optcourse.autograde.tester import RunnerProcess

    from optcourse.autograde.sandbox import SANDBOX_ROOT, TRUSTED

    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTCOURSE_SANDBOX_")}
    trusted = f"{SANDBOX_ROOT}/{TRUSTED}"
    if os.path.isdir(f"{trusted}/optcourse"):  # the lab seals library references: the runner keeps the real ones
        env["PYTHONPATH"] = os.pathsep.join(p for p in (trusted, env.get("PYTHONPATH")) if p)
    return RunnerProcess(instructor.get("prelude", []), cwd=workdir, env=env)


PRELUDE_NOTE = "[autograder] the test runner could not run these statements of the lab's notebook:"
INJECTED_TAG = "injected-parameters"  # papermill's name for the same thing


def inject_parameters(nb, parameters: str) -> None:
    """Run the lab with the instructor's parameters: a copy of the instructor's parameters cell goes right after
    the submission's (the first cell tagged ``parameters``, else the first code cell), so whatever the
    student left there (``smoke = False``, another ``model_path``) is overridden before anything uses it."""
    from nbformat.v4 import new_code_cell

    if not parameters.strip():
        return
    cells = nb.cells
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    first_code = next((i for i, c in enumerate(cells) if c.get("cell_type") == "code"), len(cells))
    at = (tagged[0] if tagged else first_code) + 1
    cells.insert(at, new_code_cell("# parameters of the graded run (the instructor's)\n" + parameters,
                                   metadata={"tags": [INJECTED_TAG]}))


def _student_workdir(lab_dir: str) -> str:
    """Copy the lab's files (not its notebooks, never following links) into the kernel's working folder."""
    import shutil

    from optcourse.autograde.kernel import WORK_DIR

    for name in os.listdir(lab_dir):
        src, dest = os.path.join(lab_dir, name), os.path.join(WORK_DIR, name)
        if name.endswith(".ipynb") or os.path.islink(src):
            continue
        if os.path.isdir(src):
            shutil.copytree(src, dest, symlinks=True)
        elif os.path.isfile(src):
            shutil.copyfile(src, dest)
    return WORK_DIR


FORK_FLOOD = 32  # processes left by one cell beyond which the kernel is not trusted (a pool has a few)


def _processes(uid: int) -> set[tuple[int, str]]:
    """The processes of ``uid`` as (pid, start time): a pid reused by a new process is a different entry."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                with open(f"/proc/{entry}/stat") as f:
                    found.add((int(entry), f.read().rsplit(")", 1)[1].split()[19]))  # field 22: start time
        except (OSError, IndexError):
            pass
    return found


def _kill_strays(uid: int, spare: int | None, keep: set[tuple[int, str]] = frozenset()) -> int:
    """Stop then kill every process of the kernel's uid but ``spare`` (the kernel, when it is still useful) and
    ``keep`` (what ran before the failed cell: a server an earlier cell started is not this cell's garbage);
    returns how many. Stopping first, until no new one appears, means a fork bomb cannot outrun the kill."""
    import signal

    seen: set[int] = set()
    for _ in range(50):
        found = {pid for pid, start in _processes(uid) - keep if pid != spare}
        if not found - seen:
            break
        for pid in found - seen:
            try:
                os.kill(pid, signal.SIGSTOP)
            except OSError:
                pass
        seen |= found
    for pid in seen:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return len(seen)


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
    c.OverwriteCells.add_missing_cells = True  # a deleted test cell is put back and run, not skipped
    from optcourse.autograde.stderr_notes import autograde_preprocessors

    c.Autograde.autograde_preprocessors = autograde_preprocessors(_sandbox_execute())
    return c


def _cell_reports(nb_path: str) -> dict:
    """What each graded cell of the executed notebook tells the grader: ``errors`` (grade_id -> (ename,
    evalue) of its first error output), ``notes`` (grade_id -> the first line it wrote to stderr, a warning that
    ``stderr_notes`` turned into a note), ``guarded`` (grade_id -> what the guard put back before the test) and
    ``readded`` (test cells the submission had deleted, put back by nbgrader)."""
    import nbformat

    from optcourse.autograde.guard import MARK
    from optcourse.autograde.stderr_notes import NOTE

    report = {"errors": {}, "notes": {}, "guarded": {}, "readded": []}
    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        gid = meta.get("grade_id")
        if not meta.get("grade") or cell.cell_type != "code":
            continue
        if "was missing from the submission" in cell.source.split("\n", 1)[0]:
            report["readded"].append(gid)
        outputs = cell.get("outputs", [])
        errors = [(str(o.get("ename", ""))[:200], str(o.get("evalue", ""))[:2000])
                  for o in outputs if o.get("output_type") == "error"]
        if gid in _stopped_cells:  # the grader's own verdict on this cell comes first
            errors.insert(0, _stopped_cells[gid])
        # a notebook's exception named like one of the grader's is the notebook's, whatever its name
        errors = [(e if (e, v) == _stopped_cells.get(gid) or e not in GRADER_ERRORS else "Exception", v)
                  for e, v in errors]
        if errors:
            report["errors"][gid] = errors[0]
        for out in outputs:
            text = str(out.get("text", "")) if out.get("output_type") == "stream" else ""
            if text.startswith(NOTE) and gid not in report["notes"]:
                report["notes"][gid] = next((ln.strip() for ln in text[len(NOTE):].splitlines() if ln.strip()), "")[:300]
            for line in text.splitlines():
                if line.startswith(MARK) and gid not in report["guarded"]:
                    report["guarded"][gid] = line[len(MARK):].strip()[:300]
    return report


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
    result = {"lab": lab, "student": student, "ok": False, "cells": {}, "errors": {}, "notes": {}, "guarded": {}, "readded": [],
              "log": "", "artifacts": {}}
    try:
        from nbgrader.api import Gradebook
        from nbgrader.apps import NbGraderAPI

        os.environ["OPTCOURSE_SANDBOX_WATCH"] = ",".join(job.get("watch", []))  # read by kernel.py
        with open(os.path.join(root, "instructor.json")) as f:
            _INSTRUCTOR.update(json.load(f))
        _JOB.update(job)
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
        notebooks = [name for name in os.listdir(graded_dir) if name.endswith(".ipynb")]
        for name in notebooks:
            report = _cell_reports(os.path.join(graded_dir, name))
            result["errors"].update(report["errors"])
            result["notes"].update(report["notes"])
            result["guarded"].update(report["guarded"])
            result["readded"] += report["readded"]
        if job.get("keep_notebook"):  # the folder is the sandbox's tmpfs: copy the executed notebook out
            _copy_artifacts(graded_dir, notebooks, os.path.join(root, "executed"))
        result["artifacts"] = _copy_artifacts(os.path.join(root, "work"), job.get("artifacts", []),
                                              os.path.join(root, "artifacts"))
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
