"""The whole pipeline on autograder/samples/demo_lab: sandboxed nbgrader autograde of a class with
a good, partial, blank, broken, endless and malicious submission, graded in parallel.

One batch run (module fixture) serves every assertion; it takes about a minute on 2 idle cores.
"""
from __future__ import annotations

import csv
import shutil
import socket
import threading
import zipfile

import nbformat
import pytest

from optcourse.autograde import Limits, grade_batch, sandbox_available
from optcourse.paths import AUTOGRADER_DIR

SAMPLES = AUTOGRADER_DIR / "samples" / "demo_lab"
ok, why = sandbox_available()
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420),
              pytest.mark.skipif(not ok, reason=f"sandbox unavailable: {why}")]
LIMITS = Limits(cell_timeout_s=8, notebook_timeout_s=150)


class Listener:
    """A TCP server on the host's 127.0.0.1 that records every connection a submission makes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
                self.connections += 1
                conn.close()
            except OSError:
                pass


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    source = root / "source"
    shutil.copytree(SAMPLES / "source", source)
    listener = Listener()
    (source / "demo_lab" / "probe_port.txt").write_text(str(listener.port))  # the malicious probe dials it
    subs = root / "submissions"
    shutil.copytree(SAMPLES / "submissions", subs)
    shutil.move(subs / "broken.ipynb.invalid", subs / "broken.ipynb")  # kept under another suffix in the repo
    out = root / "out"
    try:
        report = grade_batch("demo_lab", subs, out, source_dir=source, workers=2, limits=LIMITS,
                             progress=False, keep_autograded=True, perf_checks=[])
    finally:
        listener.stop = True
    return {"report": report, "out": out, "root": root, "source": source, "listener": listener,
            "db": f"sqlite:///{out}/gradebook.db"}


EXPECTED = {  # student -> (score, status, needs_review)
    "good": (5, "graded", False), "partial": (3, "graded", False), "blank": (0, "graded", False),
    "broken": (0, "invalid", True), "endless": (3, "graded", False), "malicious": (5, "graded", False),
}


def test_every_submission_gets_its_grade(batch):
    res = batch["report"].by_student()
    assert set(res) == set(EXPECTED)
    for student, (score, status, review) in EXPECTED.items():
        r = res[student]
        assert (r.score, r.status, r.needs_review) == (score, status, review), (student, r)
    assert batch["report"].needs_review == ["broken"]


def test_reasons_are_in_words_a_student_understands(batch):
    res = batch["report"].by_student()
    assert res["partial"].cells["test_task1_add"].reason == (
        "AssertionError: add must work with negative numbers: add(-4, 9) should be 5")
    assert res["partial"].cells["test_task2_normalize"].reason == "passed"
    assert "NotImplementedError" in res["blank"].cells["test_task1_add"].reason
    assert "limit and was stopped" in res["endless"].cells["test_task1_add"].reason
    assert res["endless"].cells["test_task2_normalize"].score == 3  # the loop cost only its own task
    assert "not a valid Jupyter notebook" in res["broken"].notes[0]


def test_malicious_attempts_all_fail(batch):
    nb = nbformat.read(batch["out"] / "artifacts" / "malicious.autograded.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    lines = [line for line in text.splitlines() if line.startswith("ATTACK")]
    names = {line.split()[1].rstrip(":") for line in lines}
    assert names == {"read_gradebook", "write_gradebook", "read_solutions", "read_hidden_tests", "read_other_student",
                     "connect_localhost", "connect_outside", "resolve_dns", "memory_bomb", "list_repo_and_root"}
    assert all(": BLOCKED " in line for line in lines), lines
    assert "MemoryError" in next(line for line in lines if "memory_bomb" in line)
    assert batch["listener"].connections == 0  # nothing reached the host's loopback
    uid_line = next(line for line in text.splitlines() if line.startswith("uid "))
    assert not uid_line.startswith("uid 0 ")  # the student's code never runs as root


def test_gradebook_csv_and_lms_export(batch):
    from nbgrader.api import Gradebook

    with Gradebook(batch["db"]) as gb:
        for student, (score, _, _) in EXPECTED.items():
            assert gb.find_submission("demo_lab", student).score == score, student
    rows = {r["student"]: r for r in csv.DictReader(open(batch["out"] / "grades.csv"))}
    assert rows["partial"]["test_task1_add"] == "0" and rows["partial"]["test_task2_normalize"] == "3"
    assert rows["broken"]["needs_review"] == "yes"
    lms = list(csv.reader(open(batch["out"] / "grades_lms.csv")))
    assert lms[0] == ["SIS Login ID", "demo_lab points"] and ["good", "5"] in lms


def test_feedback_never_shows_hidden_tests(batch):
    for student in EXPECTED:
        html = (batch["out"] / "feedback" / f"{student}.html").read_text()
        for secret in ("SECRET_HIDDEN_MARKER", "BEGIN HIDDEN", "assert add(-4, 9)", "np.arange(1, 6)", "Traceback"):
            assert secret not in html, (student, secret)
    assert "add must work with negative numbers" in (batch["out"] / "feedback" / "partial.html").read_text()
    assert "Score: 5 / 5" in (batch["out"] / "feedback" / "good.html").read_text()


class TokenCheck:
    """A stand-in performance check: passes when the artifact the grader copied out holds the token."""

    name, artifact, points = "token", "outputs/result.bin", 1

    def run(self, path, ctx):
        from optcourse.autograde.perf import CheckResult

        ok = path.read_bytes() == b"token"
        return CheckResult(self.name, float(ok), 1.0, ok, "passed" if ok else "wrong content")


def with_cell(src, code, dest):
    nb = nbformat.read(src, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(code))
    nbformat.write(nb, dest)
    return dest


def test_regrading_is_idempotent_reads_zips_and_brings_artifacts_out(batch):
    root = batch["root"]
    good = with_cell(SAMPLES / "submissions" / "good.ipynb",
                     "import os\nos.makedirs('outputs', exist_ok=True)\nopen('outputs/result.bin', 'wb').write(b'token')",
                     root / "good_art.ipynb")
    partial = with_cell(SAMPLES / "submissions" / "partial.ipynb",  # a link to the gradebook is never followed
                        "import os\nos.makedirs('outputs', exist_ok=True)\nos.symlink('/grading/gradebook.db', 'outputs/result.bin')",
                        root / "partial_art.ipynb")
    archive = root / "class.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # a second submission format; ids from file names
        zf.write(good, "download/good_demo_lab.ipynb")
        zf.write(partial, "partial.ipynb")
    report = grade_batch("demo_lab", archive, batch["out"], source_dir=batch["source"], workers=2, limits=LIMITS,
                         progress=False, perf_checks=[TokenCheck()])
    res = report.by_student()
    assert {s: r.score for s, r in res.items()} == {"good": 6, "partial": 3}
    assert res["good"].perf[0].passed
    assert "did not save outputs/result.bin" in res["partial"].perf[0].reason
    from nbgrader.api import Gradebook

    with Gradebook(batch["db"]) as gb:  # the notebook part again: same grades, nobody duplicated
        assert gb.find_submission("demo_lab", "partial").score == 3
        assert gb.find_submission("demo_lab", "good").score == 5
        assert gb.find_submission("demo_lab", "malicious").score == 5  # others untouched
        assert len(gb.assignment_submissions("demo_lab")) == 6
