"""The trusted test runner: where a lab's test cells (visible and hidden) run while a submission is graded.

nbgrader's autograde would run each test cell in the kernel that ran the student's code, where an input
transformer, an AST transformer, a monkeypatched ``torch.allclose`` or a thread can change what a test does.
Here the sandbox's grading step (``inner.py``, root of the sandbox) starts this runner as a separate process
next to the kernel. The runner

* builds its namespace from the instructor's source notebook, never from the submission: the imports of its
  code cells and the functions and classes they define (helpers such as ``onnx_accuracy`` run here);
* runs each test cell's source in that namespace; a name the namespace lacks (an answer function, a
  variable the notebook computed) is asked of the kernel through ``remote.py`` and comes back as data or as a
  handle to call; ``globals()`` in a test is the kernel's namespace;
* reports each cell's printed text and its error (name and message) to ``inner.py``, which writes them as
  the cell's outputs: nbgrader's gradebook then scores the cell as usual.

The kernel never receives a test's source. A test that runs longer than the cell limit is stopped by
``inner.py`` killing this process (a new one serves the next cell).

Protocol with ``inner.py``: JSON lines on stdin (commands) and on the file descriptor given as argument
(answers): ``{"prelude": [...]}`` -> ``{"ready": ..., "failed": [...]}``; ``{"cell": source, "name": grade_id,
"address": ..., "token": ...}`` -> ``{"listening": true}``, then ``{"stdout", "stderr", "error"}``.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import io
import json
import os
import socket
import sys
import traceback

ACCEPT_TIMEOUT_S = 20.0
MAX_OUTPUT = 20000


# ------------------------------------------------------------------------------- what the runner starts with
def _python_source(cell_source: str) -> str:
    """A cell's source with IPython's magics turned into Python (``%matplotlib inline`` ...)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(cell_source)
    except Exception:  # noqa: BLE001 - IPython missing or odd input: the source as is
        return cell_source


def parameters_source(source_notebook: dict) -> str:
    """The instructor's parameters cell (tagged ``parameters``, papermill's convention): what the grader runs
    the lab with, whatever the submission's parameters cell says."""
    for cell in source_notebook.get("cells", []):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = cell.get("source", "")
            return "".join(source) if isinstance(source, list) else source
    return ""


def prelude(source_notebook: dict) -> list[str]:
    """The statements of the instructor's notebook that the runner executes before any test: the imports and
    the function and class definitions of its code cells that are neither answers nor tests."""
    statements = []
    for cell in source_notebook.get("cells", []):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.get("cell_type") != "code" or meta.get("solution") or meta.get("grade"):
            continue
        source = "".join(cell.get("source", "")) if isinstance(cell.get("source"), list) else cell.get("source", "")
        try:
            tree = ast.parse(_python_source(source))
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                statements.append(ast.unparse(node))
    return statements


# ------------------------------------------------------------------------------------------ the namespace
class RunnerNamespace(dict):
    """The runner's globals: what the prelude and the tests define, then the kernel's names on demand."""

    def __init__(self):
        super().__init__()
        self.session = None
        self.fetched: dict[str, object] = {}
        self.deferred: list[str] = []  # prelude statements that need the notebook's values (a default argument)
        self["globals"] = lambda: KernelGlobals(self)

    def run_prelude(self, statements: list[str]) -> list[str]:
        """Execute the instructor's statements; returns those that failed (kept to retry with the kernel)."""
        failed = []
        for statement in statements:
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    exec(compile(statement, "<prelude>", "exec"), self)  # noqa: S102 - the instructor's code
            except Exception as exc:  # noqa: BLE001 - e.g. a default argument that is the notebook's value
                failed.append(f"{statement.splitlines()[0][:100]}: {type(exc).__name__}")
                self.deferred.append(statement)
        return failed

    def retry_deferred(self) -> None:
        """Once the kernel answers, try the prelude statements that needed its values again."""
        statements, self.deferred = self.deferred, []
        self.run_prelude(statements)

    def __missing__(self, name):
        if name.startswith("__") or hasattr(builtins, name) or self.session is None:
            raise KeyError(name)
        if name not in self.fetched:
            from optcourse.autograde.remote import _UNDEFINED

            value = self.session.op("lookup", name=name)
            if value is _UNDEFINED:
                raise KeyError(name)
            self.fetched[name] = value
        return self.fetched[name]


class KernelGlobals:
    """``globals()`` inside a test: the notebook's namespace, read and written through the channel (tests ask
    ``"x" in globals()`` to tell "the notebook did not compute x" from a wrong x)."""

    def __init__(self, namespace: RunnerNamespace):
        self._ns = namespace

    def __contains__(self, name) -> bool:
        return dict.__contains__(self._ns, name) or bool(self._ns.session.op("has", name=str(name)))

    def __getitem__(self, name):
        return self._ns[name]

    def get(self, name, default=None):
        try:
            return self._ns[name]
        except KeyError:
            return default

    def __setitem__(self, name, value) -> None:
        self._ns.session.op("set", name=str(name), value=self._ns.session.codec.encode(value))
        self._ns.fetched.pop(name, None)

    def update(self, other=(), **values) -> None:
        for name, value in {**dict(other), **values}.items():
            self[name] = value


# ------------------------------------------------------------------------------------------------- runner
def _error_report(exc: BaseException, cell_name: str) -> dict:
    """Name and message of a test's failure, and where in the test it happened (line numbers, no source)."""
    from optcourse.autograde.remote import RemoteError

    name = exc.__class__.__name__
    lines = [f"line {frame.lineno} of the test" for frame in traceback.extract_tb(exc.__traceback__)
             if frame.filename == f"<{cell_name}>"]
    if isinstance(exc, RemoteError) and type(exc) is RemoteError:
        name = exc.type_name.rpartition(":")[2] or "Exception"
    return {"ename": name[:200], "evalue": str(exc)[:4000], "traceback": lines[-3:]}


def run_cell(namespace: RunnerNamespace, command: dict, answer) -> dict:
    """Run one test cell with the kernel on the other end of the channel (see the module's protocol)."""
    import optcourse.course.testing as testing
    from optcourse.autograde import remote

    server = remote.listen(command["address"])
    server.settimeout(ACCEPT_TIMEOUT_S)
    answer({"listening": True})
    stdout, stderr = io.StringIO(), io.StringIO()
    session, error = None, None
    try:
        try:
            conn, _ = server.accept()
        except socket.timeout:
            raise RuntimeError("the notebook's kernel did not answer the grader (was the course library replaced?)")
        conn.settimeout(None)
        hello = remote.recv_frame(conn)
        if hello.get("hello") != command["token"]:
            raise RuntimeError("the kernel answered the grader with a wrong token")
        session = remote.RunnerSession(conn)
        namespace.session, testing._session = session, session
        namespace.fetched.clear()
        namespace.retry_deferred()
        code = compile(_python_source(command["cell"]), f"<{command['name']}>", "exec")
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            exec(code, namespace)  # noqa: S102 - the instructor's test, in the trusted process
    except BaseException as exc:  # noqa: BLE001 - a failed test is a result
        error = _error_report(exc, command["name"])
    finally:
        namespace.session, testing._session = None, None
        namespace.fetched.clear()
        if session is not None:
            session.close()
        server.close()
    return {"stdout": stdout.getvalue()[:MAX_OUTPUT], "stderr": stderr.getvalue()[:MAX_OUTPUT], "error": error}


def main(answer_fd: int) -> int:
    out = os.fdopen(answer_fd, "w")

    def answer(message: dict) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    namespace = RunnerNamespace()
    for line in sys.stdin:
        command = json.loads(line)
        if "prelude" in command:
            answer({"ready": True, "failed": namespace.run_prelude(command["prelude"])})
        elif "cell" in command:
            answer(run_cell(namespace, command, answer))
    return 0


# ------------------------------------------------------------------------------- inner.py's side of it
class RunnerProcess:
    """``inner.py``'s handle on the runner: started once per notebook, restarted after a test that had to
    be stopped."""

    def __init__(self, prelude_statements: list[str], cwd: str, env: dict | None = None):
        self.prelude, self.cwd, self.env = prelude_statements, cwd, env
        self.proc = None
        self.prelude_failed: list[str] = []

    def _start(self) -> None:
        import subprocess

        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "optcourse.autograde.tester", str(write_fd)], cwd=self.cwd, env=self.env,
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write_fd,),
            start_new_session=True, text=True)
        os.close(write_fd)
        self._answers = os.fdopen(read_fd, "r")
        self._send({"prelude": self.prelude})
        ready = self._read(300.0)
        self.prelude_failed = ready.get("failed", [])

    def _send(self, message: dict) -> None:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def _read(self, timeout: float) -> dict:
        import select

        ready, _, _ = select.select([self._answers], [], [], max(timeout, 0.0))
        if not ready:
            raise TimeoutError
        line = self._answers.readline()
        if not line:
            raise RuntimeError("the test runner stopped")
        return json.loads(line)

    def stop(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()
        self.proc = None

    def run(self, source: str, name: str, timeout: float, start_agent) -> dict:
        """Run one test cell; ``start_agent(address, token)`` asks the kernel to connect. Returns the runner's
        report, or an ``error`` saying why the test could not be judged."""
        from optcourse.autograde.remote import new_address

        if self.proc is None or self.proc.poll() is not None:
            self._start()
        address, token = new_address()
        self._send({"cell": source, "name": name, "address": address, "token": token})
        try:
            self._read(60.0)  # listening
            start_agent(address, token)
            return self._read(timeout)
        except TimeoutError:
            self.stop()
            return {"stdout": "", "stderr": "", "timed_out": True, "error": {
                "ename": "TestTimeoutError", "traceback": [],
                "evalue": f"the test did not finish within {timeout:.0f} s (the notebook's code it calls ran too long)"}}
        except (RuntimeError, ValueError, OSError) as exc:
            self.stop()
            return {"stdout": "", "stderr": "", "error": {"ename": "GraderError", "traceback": [],
                                                         "evalue": f"the test runner failed: {exc}"[:500]}}


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
