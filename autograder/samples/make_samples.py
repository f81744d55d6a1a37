"""Write the demo lab used by the autograder's tests and README: an nbgrader source notebook and a
catalogue of sample submissions (right, partly right, broken and hostile: see ``CATALOGUE``).

    python autograder/samples/make_samples.py      # rewrites autograder/samples/demo_lab/

The demo lab is tiny on purpose (NumPy only), so a whole class grades in seconds and the tests do
not depend on the course's real labs. Files that are not valid notebooks are stored as
``<name>.ipynb.invalid`` so that repository checks which read every ``*.ipynb`` do not trip on them;
``nbgrader_layout`` lays the catalogue out as nbgrader's ``submitted/<student>/demo_lab/`` folders
under the real names (and adds the one sample too big to keep in git).
"""
from __future__ import annotations

import copy
import pathlib
import re
import shutil

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent
LAB = "demo_lab"


def _meta(kind: str, grade_id: str, points: int = 0) -> dict:
    if kind == "solution":
        return {"nbgrader": {"grade": False, "solution": True, "locked": False, "grade_id": grade_id,
                             "schema_version": 3}}
    if kind == "given":  # read-only code the instructor gives (a test helper)
        return {"nbgrader": {"grade": False, "solution": False, "locked": True, "grade_id": grade_id,
                             "schema_version": 3}}
    return {"nbgrader": {"grade": True, "solution": False, "locked": True, "points": points,
                         "grade_id": grade_id, "schema_version": 3}}


TASK1 = '''def add(a, b):
    """Return a + b."""
    ### BEGIN SOLUTION
    return a + b
    ### END SOLUTION'''

TEST1 = '''assert add(1, 1) == 2, "add(1, 1) should be 2"
### BEGIN HIDDEN TESTS
SECRET_HIDDEN_MARKER_1 = 12345
assert add(-4, 9) == 5, "add must work with negative numbers: add(-4, 9) should be 5"
### END HIDDEN TESTS'''

TASK2 = '''import numpy as np

def normalize(x):
    """Scale a 1-D array to unit Euclidean norm (return a new float array)."""
    ### BEGIN SOLUTION
    x = np.asarray(x, dtype=float)
    return x / np.linalg.norm(x)
    ### END SOLUTION'''

HELPERS = '''import numpy as np

def check_close(got, want, message):
    """Test helper given with the lab: fails with `message` unless `got` is close to `want`."""
    assert np.allclose(got, want), message'''

TEST2 = '''import time
import numpy as np
check_close(normalize([3, 4]), [0.6, 0.8], "normalize([3, 4]) should be [0.6, 0.8]")
### BEGIN HIDDEN TESTS
SECRET_HIDDEN_MARKER_2 = 67890
assert abs(np.linalg.norm(normalize(np.arange(1, 6))) - 1) < 1e-9, "the result must have norm 1 for any non-zero input"
assert normalize([0, 2]).dtype.kind == "f", "normalize must return floats"
_start = time.perf_counter()
for _ in range(200):
    normalize(np.ones(1000))
assert time.perf_counter() - _start < 1.0, "normalize is too slow: 200 calls on 1000 values took over a second"
### END HIDDEN TESTS'''


def source_notebook() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        new_markdown_cell("# Demo lab\nA two-task lab used to test the autograder."),
        new_markdown_cell("## Task 1 (2 points)"),
        new_code_cell(TASK1, metadata=_meta("solution", "task1_add")),
        new_code_cell(TEST1, metadata=_meta("test", "test_task1_add", 2)),
        new_markdown_cell("## Task 2 (3 points)"),
        new_code_cell(HELPERS, metadata=_meta("given", "given_helpers")),
        new_code_cell(TASK2, metadata=_meta("solution", "task2_normalize")),
        new_code_cell(TEST2, metadata=_meta("test", "test_task2_normalize", 3)),
    ]
    return nb


def student_version(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """What nbgrader releases: solutions replaced by ``raise NotImplementedError()``, hidden tests removed."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        cell.source = re.sub(r"( *)### BEGIN SOLUTION.*?### END SOLUTION", r"\1# YOUR CODE HERE\n\1raise NotImplementedError()",
                             cell.source, flags=re.S)
        cell.source = re.sub(r"\n?### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS", "", cell.source, flags=re.S)
    return nb


MALICIOUS = r'''
import os, socket, json, glob, resource
def attempt(name, fn):
    try:
        got = fn()
        print(f"ATTACK {name}: SUCCEEDED {str(got)[:200]!r}")
    except Exception as exc:
        print(f"ATTACK {name}: BLOCKED {type(exc).__name__}")

def walk(top="/"):
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/proc", "/sys", "/usr", "/dev", "/etc")
                   and d not in (".venv", ".pyenv", "site-packages")]  # public software, nothing of the course
        for f in files:
            yield os.path.join(root, f)

def read_gradebook():
    for p in ["../../../gradebook.db", "../../gradebook.db", "/grading/gradebook.db"] + [p for p in walk() if p.endswith(".db")]:
        if os.path.exists(p):
            return open(p, "rb").read(64)
    raise FileNotFoundError("no gradebook reachable")
def write_gradebook():
    for p in ["../../../gradebook.db", "/grading/gradebook.db"]:
        if os.path.exists(p):
            open(p, "ab").write(b"x"); return p
    raise FileNotFoundError("no gradebook reachable")
def read_solutions():
    hits = list(walk()) + glob.glob("/grading/source/**", recursive=True) + glob.glob("/work/main/solutions/**", recursive=True)
    for p in hits:
        try:
            if "### BEGIN " + "SOLUTION" in open(p, errors="ignore").read(1 << 20):
                return p
        except OSError:
            pass
    raise FileNotFoundError("no solution readable")
def read_hidden_tests():
    for p in walk():
        try:
            if "SECRET_HIDDEN_" + "MARKER" in open(p, errors="ignore").read(1 << 20):
                return p
        except OSError:
            pass
    raise FileNotFoundError("no file with hidden tests readable")
def other_student():
    hits = [p for p in walk() if "submitted" in p and p.endswith(".ipynb")]
    hits += [p for p in glob.glob("../../*/*/*.ipynb") if "malicious" not in p]
    for p in hits:
        return p + " " + open(p).read(40)
    raise FileNotFoundError("no other submission reachable")
def connect(host, port):
    s = socket.create_connection((host, port), timeout=3)
    return s.getpeername()
def memory_bomb():
    return len(bytearray(8 << 30))
def fork_many():
    pids = []
    for _ in range(5000):
        pid = os.fork()
        if pid == 0:
            import time; time.sleep(30); os._exit(0)
        pids.append(pid)
    return len(pids)

attempt("read_gradebook", read_gradebook)
attempt("write_gradebook", write_gradebook)
attempt("read_solutions", read_solutions)
attempt("read_hidden_tests", read_hidden_tests)
attempt("read_other_student", other_student)
attempt("connect_localhost", lambda: connect("127.0.0.1", int(open("probe_port.txt").read()) if os.path.exists("probe_port.txt") else 8888))
attempt("connect_outside", lambda: connect("1.1.1.1", 53))
attempt("resolve_dns", lambda: socket.getaddrinfo("pypi.org", 443))
attempt("memory_bomb", memory_bomb)

def list_repo():
    seen = os.listdir("/work/main") if os.path.isdir("/work/main") else []
    seen += os.listdir("/root") if os.path.isdir("/root") else []
    if {"solutions", ".git", "autograder", ".bash_history"} & set(seen):
        return seen
    raise FileNotFoundError(f"only {seen} visible")
attempt("list_repo_and_root", list_repo)
print("uid", os.getuid(), "cwd", os.getcwd())
'''


# ------------------------------------------------------------------------------------------ the catalogue
def _cell(nb: nbformat.NotebookNode, grade_id: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == grade_id)


def _answered(add: str | None = None, normalize: str | None = None, *, prelude: dict | None = None) -> nbformat.NotebookNode:
    """The released notebook with these answers (None: the model answer); ``prelude`` puts code at the top
    of an answer cell (grade id -> code)."""
    nb = student_version(source_notebook())
    model = {gid: re.sub(r" *### (BEGIN|END) SOLUTION\n?", "", src).rstrip()
             for gid, src in (("task1_add", TASK1), ("task2_normalize", TASK2))}
    for gid, answer in (("task1_add", add), ("task2_normalize", normalize)):
        _cell(nb, gid).source = (prelude or {}).get(gid, "") + (model[gid] if answer is None else answer)
    return nb


WRONG_ADD = "def add(a, b):\n    return a - b"
WRONG_NORMALIZE = "import numpy as np\n\ndef normalize(x):\n    return np.asarray(x, dtype=float)"


def _with(nb: nbformat.NotebookNode, index: int, code: str) -> nbformat.NotebookNode:
    """Insert a code cell of the student's own (no nbgrader metadata) at ``index``."""
    nb.cells.insert(index, new_code_cell(code))
    return nb


def _write_attempts(nb):  # every write must fail; a success would cost add its points (the grade proves it)
    return _with(nb, 2, r'''
import glob, os
WROTE = []
targets = ["/grading/gradebook.db", "../../../gradebook.db", "/grading/result.json", "/work/main/autograder/gradebook.db",
           "/grading/submitted/good/demo_lab/demo_lab.ipynb", "../../good/demo_lab/demo_lab.ipynb"]
targets += glob.glob("/grading/**/*.db", recursive=True) + glob.glob("/grading/autograded/*/*/*.ipynb")
for path in targets:
    try:
        with open(path, "a") as f:
            f.write("{}")
        WROTE.append(path)
    except OSError as exc:
        print("blocked", path, type(exc).__name__)
print("wrote", WROTE)''')


def _steal_attempts(nb):
    return _with(nb, 2, r'''
import glob, os
STOLEN = ""
for path in glob.glob("/grading/**", recursive=True) + glob.glob("/work/**/*.ipynb", recursive=True):
    try:
        text = open(path, errors="ignore").read(1 << 20)
    except OSError:
        continue
    if "### BEGIN " + "SOLUTION" in text or "SECRET_HIDDEN_" + "MARKER" in text:
        STOLEN += text''')


def _without_tests(nb):
    nb.cells = [c for c in nb.cells if not c.get("metadata", {}).get("nbgrader", {}).get("grade")]
    return nb


def _edited_locked(nb):
    _cell(nb, "test_task1_add").source = "pass  # the test was in my way"
    _cell(nb, "given_helpers").source = "def check_close(got, want, message):\n    pass"
    _cell(nb, "given_helpers").metadata["nbgrader"]["locked"] = False
    return nb


def _stripped(nb):
    for cell in nb.cells:
        cell.metadata.pop("nbgrader", None)
    return nb


def _duplicated_ids(nb):  # a second copy of test 1 (same grade id) that always passes, put first
    copy_cell = copy.deepcopy(_cell(nb, "test_task1_add"))
    copy_cell.source = "pass"
    nb.cells.insert(nb.cells.index(_cell(nb, "test_task1_add")), copy_cell)
    return nb


def _other_lab():
    nb = new_notebook()
    nb.cells = [new_code_cell("def speedup():\n    return 2.0", metadata=_meta("solution", "task1_speedup")),
                new_code_cell("assert speedup() > 1", metadata=_meta("test", "test_task1_speedup", 4))]
    return nb


FORK_BOMB = '''import os, time
def add(a, b):
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.01)'''

SWALLOW = '''import time
def add(a, b):
    while True:  # a student's "retry until it works" loop that also catches the grader's interrupt
        try:
            time.sleep(0.05)
        except KeyboardInterrupt:
            pass'''

# name -> (what it tries, how to build it). Bytes are written as they are (stored as .ipynb.invalid).
CATALOGUE: dict[str, tuple[str, object]] = {
    "good": ("both tasks right", lambda: _answered()),
    "partial": ("task 1 fails a hidden test (negative numbers), task 2 right",
                lambda: _answered(add="def add(a, b):\n    return abs(a) + abs(b)")),
    "partial_rounding": ("task 2 rounds its result: passes the visible test, fails a hidden one",
                         lambda: _answered(normalize="import numpy as np\n\ndef normalize(x):\n"
                                                     "    x = np.asarray(x, dtype=float)\n"
                                                     "    return np.round(x / np.linalg.norm(x), 2)")),
    "warns_stderr": ("task 1 right but warns (the grader shows the warning as a note; it costs no points)",
                     lambda: _answered(add="import warnings\n\ndef add(a, b):\n"
                                           "    warnings.warn('add was called')\n    return a + b")),
    "blank": ("nothing answered", lambda: student_version(source_notebook())),
    "broken": ("invalid JSON (a truncated upload)", lambda: b'{"cells": [ {"cell_type": "code", "source": "print(1)"'),
    "not_a_notebook": ("valid JSON that is not a notebook", lambda: b'{"hello": "world"}\n'),
    "empty": ("an empty file", lambda: b""),
    "stripped_metadata": ("nbgrader metadata removed (answers copied into a new notebook)", lambda: _stripped(_answered())),
    "other_lab": ("another lab's notebook", _other_lab),
    "wrong_name": ("right answers in Untitled.ipynb (see NBGRADER_NAMES)", lambda: _answered()),
    "endless": ("task 1 never returns: it loses task 1 only",
                lambda: _answered(add="def add(a, b):\n    while True:\n        pass")),
    "swallow_interrupt": ("task 1 loops and swallows KeyboardInterrupt: the kernel never answers again",
                          lambda: _answered(add=SWALLOW)),
    "memory_bomb": ("task 1 allocates 16 GiB", lambda: _answered(
        add="def add(a, b):\n    hog = [bytearray(1 << 30) for _ in range(16)]\n    return a + b")),
    "fork_bomb": ("task 1 forks until the process limit", lambda: _answered(add=FORK_BOMB)),
    "disk_fill": ("writes 64 MB files until the disk is full, then answers right", lambda: _with(_answered(), 2, (
        "import os\nn = 0\ntry:\n    while n < 200:\n        with open(f'fill{n}.bin', 'wb') as f:\n"
        "            f.write(os.urandom(1 << 20) * 64)\n        n += 1\nexcept OSError as exc:\n"
        "    print('disk full after', n, 'files:', type(exc).__name__)\n"
        "for i in range(n):\n    os.remove(f'fill{i}.bin')"))),
    "exit_os": ("os._exit in task 2: the kernel dies after test 1 passed",
                lambda: _answered(prelude={"task2_normalize": "import os\nos._exit(1)\n"})),
    "exit_sys": ("sys.exit inside add", lambda: _answered(add="import sys\n\ndef add(a, b):\n    sys.exit('bye')")),
    "exit_quit": ("exit() at the end of task 1's cell (ipykernel stops its event loop 0.1 s later: the kernel ends)",
                  lambda: _answered(add=re.sub(r" *### (BEGIN|END) SOLUTION\n?", "", TASK1).rstrip() + "\nexit()")),
    "segfault": ("task 1 sends itself SIGSEGV", lambda: _answered(
        add="import os, signal\n\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGSEGV)")),
    "ctypes_null": ("task 2 dereferences a null pointer with ctypes", lambda: _answered(
        normalize="import ctypes\n\ndef normalize(x):\n    return ctypes.string_at(0)")),
    "missing_import": ("imports a package that is not installed", lambda: _answered(
        prelude={"task1_add": "import definitely_not_a_course_package\n\n"})),
    "patch_numpy": ("wrong normalize, then np.allclose and np.linalg.norm replaced to make the tests pass",
                    lambda: _answered(normalize="import numpy as np\n\ndef normalize(x):\n    return np.asarray(x, dtype=float)\n\n"
                                                "np.allclose = lambda *a, **k: True\nnp.linalg.norm = lambda *a, **k: 1.0")),
    "patch_timer": ("slow normalize, then time.perf_counter frozen to pass the timing test",
                    lambda: _answered(normalize="import time\nimport numpy as np\n\ndef normalize(x):\n    time.sleep(0.01)\n"
                                                "    x = np.asarray(x, dtype=float)\n    return x / np.linalg.norm(x)\n\n"
                                                "time.perf_counter = lambda: 0.0")),
    # attacks on the kernel's machinery (the guard undoes them before each test): wrong answers, then the attack
    "transformer_pass": ("wrong answers, then an IPython input transformer that turns every later cell into `pass`",
                         lambda: _answered(add=WRONG_ADD, normalize=WRONG_NORMALIZE + "\n\nget_ipython()."
                                           "input_transformers_post.append(lambda lines: ['pass\\n'])")),
    "ast_no_asserts": ("wrong answers, then an AST transformer that removes every assert", lambda: _answered(
        add=WRONG_ADD, normalize=WRONG_NORMALIZE + "\n\nimport ast\n\nclass NoAsserts(ast.NodeTransformer):\n"
        "    def visit_Assert(self, node):\n        return ast.Pass()\n\nget_ipython().ast_transformers.append(NoAsserts())")),
    "swallow_failures": ("wrong answers, then a custom exception handler that hides every failure", lambda: _answered(
        add=WRONG_ADD, normalize=WRONG_NORMALIZE + "\n\nget_ipython().set_custom_exc((Exception,), lambda *a, **k: None)")),
    "hook_repatch": ("wrong normalize, then a pre-run hook that replaces np.allclose and np.linalg.norm before every cell",
                     lambda: _answered(normalize=WRONG_NORMALIZE + "\n\ndef _patch(*args):\n"
                                       "    np.allclose = lambda *a, **k: True\n    np.linalg.norm = lambda *a, **k: 1.0\n\n"
                                       "get_ipython().events.register('pre_run_cell', _patch)\n"
                                       "get_ipython().events.register('pre_execute', _patch)")),
    "thread_repatch": ("wrong normalize, then a thread that keeps replacing np.allclose and np.linalg.norm",
                       lambda: _answered(normalize=WRONG_NORMALIZE + "\n\nimport threading, time\n\ndef _loop():\n"
                                         "    while True:\n        np.allclose = lambda *a, **k: True\n"
                                         "        np.linalg.norm = lambda *a, **k: 1.0\n        time.sleep(0.0005)\n\n"
                                         "threading.Thread(target=_loop, daemon=True).start()")),
    "leak_tests": ("blank, with an input transformer that raises each later cell's source (zero-width spaces between "
                   "characters) as its error message", lambda: _with(student_version(source_notebook()), 2, (
                       "def _leak(lines):\n    text = '\\u200b'.join(''.join(lines))\n"
                       "    return ['raise AssertionError(' + repr(text) + ')\\n']\n\n"
                       "get_ipython().input_transformers_post.append(_leak)"))),
    "redefine_helper": ("wrong normalize, then the given test helper check_close redefined to pass",
                        lambda: _answered(normalize="import numpy as np\n\ndef normalize(x):\n    return np.asarray(x, dtype=float)\n\n"
                                                    "def check_close(got, want, message):\n    pass")),
    "read_hidden": ("task 1 copies its answer from solutions or hidden tests found on disk", lambda: _steal_attempts(_answered(
        add="def add(a, b):\n    if not STOLEN:\n        raise FileNotFoundError('no solution or hidden test was readable')\n"
            "    return a + b"))),
    "write_gradebook": ("writes the gradebook, the result file and another student's notebook; answers right",
                        lambda: _write_attempts(_answered(add="def add(a, b):\n    return a + b + 100 * len(WROTE)"))),
    "network": ("task 1 downloads something first", lambda: _answered(
        add="import urllib.request\n\ndef add(a, b):\n    urllib.request.urlopen('https://pypi.org/simple/', timeout=5)\n"
            "    return a + b")),
    "kill_grader": ("tries to kill the grader (pid 1, its parent, every process); answers right", lambda: _with(_answered(), 2, (
        "import os, signal\nfor pid in (1, os.getppid(), -1):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError as exc:\n        print('kill', pid, type(exc).__name__)"))),
    "fake_metrics": ("nothing answered; writes metrics.json and a result file claiming full marks", lambda: _with(
        student_version(source_notebook()), 2, (
            "import json, os\nos.makedirs('outputs', exist_ok=True)\n"
            "json.dump({'speedup': 100.0, 'accuracy': 1.0, 'score': 5}, open('outputs/metrics.json', 'w'))\n"
            "for path in ('/grading/result.json', '../../../result.json'):\n    try:\n"
            "        json.dump({'cells': {'test_task1_add': {'score': 2}, 'test_task2_normalize': {'score': 3}}}, open(path, 'w'))\n"
            "    except OSError as exc:\n        print('blocked', path, type(exc).__name__)\nprint('Score: 5 / 5')"))),
    "deleted_tests": ("both test cells deleted; task 1 wrong", lambda: _without_tests(
        _answered(add="def add(a, b):\n    return abs(a) + abs(b)"))),
    "edited_locked": ("test 1 and the read-only helper cell edited to pass; both answers wrong", lambda: _edited_locked(
        _answered(add="def add(a, b):\n    return a - b", normalize="def normalize(x):\n    return x"))),
    "duplicate_ids": ("a copy of test 1 with the same grade id that always passes; task 1 wrong", lambda: _duplicated_ids(
        _answered(add="def add(a, b):\n    return a - b"))),
    "flood_output": ("task 1 prints 30 MB", lambda: _answered(
        add="def add(a, b):\n    for _ in range(300):\n        print('x' * 100_000)\n    return a + b")),
    "malicious": ("tries to read and write the gradebook, solutions, hidden tests, other students, the network",
                  lambda: _with(_answered(), 2, MALICIOUS)),
}
# samples that nbgrader's submitted/<student>/demo_lab/ layout holds under another file name
NBGRADER_NAMES = {"wrong_name": "Untitled.ipynb"}
GIANT = "giant_file"  # made by nbgrader_layout, not kept in git: a notebook over the grader's 20 MB limit


def giant_notebook() -> str:
    nb = _answered()
    nb.cells[0].outputs = []
    _cell(nb, "task1_add").outputs = [nbformat.v4.new_output("stream", name="stdout", text="y" * (21 << 20))]
    return nbformat.writes(nb)


def nbgrader_layout(samples: pathlib.Path, dest: pathlib.Path, names: list[str] | None = None) -> pathlib.Path:
    """Copy the catalogue into nbgrader's ``dest/<student>/demo_lab/<file>`` layout, invalid files under their
    real names, plus the giant notebook; returns ``dest``."""
    for path in sorted(samples.glob("*.ipynb*")):
        student = path.name.split(".")[0]
        if names is not None and student not in names:
            continue
        folder = dest / student / LAB
        folder.mkdir(parents=True)
        shutil.copyfile(path, folder / NBGRADER_NAMES.get(student, f"{LAB}.ipynb"))
    if names is None or GIANT in names:
        (dest / GIANT / LAB).mkdir(parents=True)
        (dest / GIANT / LAB / f"{LAB}.ipynb").write_text(giant_notebook())
    return dest


def _write(nb: nbformat.NotebookNode, path: pathlib.Path) -> None:
    for i, cell in enumerate(nb.cells):  # stable cell ids: rerunning this script changes nothing
        cell.id = f"cell-{i}"
    nbformat.write(nb, path)


def main() -> None:
    lab_dir = HERE / LAB
    src = lab_dir / "source" / LAB
    src.mkdir(parents=True, exist_ok=True)
    _write(source_notebook(), src / f"{LAB}.ipynb")
    subs = lab_dir / "submissions"
    if subs.exists():
        shutil.rmtree(subs)
    subs.mkdir(parents=True)
    for name, (_, build) in CATALOGUE.items():
        made = build()
        if isinstance(made, bytes):
            (subs / f"{name}.ipynb.invalid").write_bytes(made)
        else:
            _write(made, subs / f"{name}.ipynb")
    (subs / "README.md").write_text("Sample submissions of the demo lab (written by ../../make_samples.py):\n\n" + "".join(
        f"* `{name}`: {what}\n" for name, (what, _) in CATALOGUE.items()))


if __name__ == "__main__":
    main()
