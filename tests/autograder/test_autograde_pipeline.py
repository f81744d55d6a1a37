"""The whole pipeline on autograder/samples/demo_lab: sandboxed nbgrader autograde of the sample
catalogue (right, partly right, broken and hostile submissions; autograder/samples/make_samples.py),
graded in parallel, on the local pool and on a local Ray instance.

One batch run of the whole catalogue (module fixture) serves every assertion; it takes 2-4 minutes on
2 cores (most of it nbgrader and kernel start-up, two sandboxes at a time).
"""
from __future__ import annotations

import csv
import shutil
import socket
import sys
import threading
import zipfile

import nbformat
import pytest

from optcourse.autograde import Limits, grade_batch, sandbox_available
from optcourse.core.paths import AUTOGRADER_DIR

SAMPLES = AUTOGRADER_DIR / "samples" / "demo_lab"
sys.path.insert(0, str(AUTOGRADER_DIR / "samples"))
import make_samples  # noqa: E402

ok, why = sandbox_available()
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200),
              pytest.mark.skipif(not ok, reason=f"sandbox unavailable: {why}")]
# short limits keep the catalogue quick; a small process limit keeps the fork bomb from loading a shared machine
LIMITS = Limits(cell_timeout_s=5, notebook_timeout_s=60, memory_bytes=2 << 30, work_bytes=128 << 20, nproc=128)


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
    subs = make_samples.nbgrader_layout(SAMPLES / "submissions", root / "submitted")
    out = root / "out"
    try:
        report = grade_batch("demo_lab", subs, out, source_dir=source, workers=2, limits=LIMITS,
                             progress=False, keep_autograded=True, perf_checks=[])
    finally:
        listener.stop = True
    return {"report": report, "out": out, "root": root, "source": source, "listener": listener,
            "db": f"sqlite:///{out}/gradebook.db", "submitted": subs}


T1, T2 = "test_task1_add", "test_task2_normalize"
NOT_RUN = "not run: the kernel died in an earlier cell"
# student -> (score, status, needs an instructor's look, {test cell or "notes": a piece of its reason})
EXPECTED = {
    "good": (5, "graded", False, {T1: "passed", T2: "passed"}),
    "partial": (3, "graded", False, {T1: "AssertionError: add must work with negative numbers: add(-4, 9) should be 5"}),
    "partial_rounding": (2, "graded", False, {T1: "passed", T2: "the result must have norm 1"}),
    "warns_stderr": (5, "graded", False, {T1: "passed", T2: "passed"}),  # a warning costs nothing (a note)
    "blank": (0, "graded", False, {T1: "not answered yet (NotImplementedError)", T2: "not answered yet"}),
    "broken": (0, "invalid", True, {"notes": "not a valid Jupyter notebook (NotJSONError)"}),
    "not_a_notebook": (0, "invalid", True, {"notes": "not a valid Jupyter notebook"}),
    "empty": (0, "invalid", True, {"notes": "the submitted file is empty"}),
    "giant_file": (0, "invalid", True, {"notes": "(limit 20 MB): clear large outputs"}),
    "stripped_metadata": (0, "invalid", True, {"notes": "no nbgrader cell metadata"}),
    "other_lab": (0, "invalid", True, {"notes": "cells are not demo_lab's (is it another lab's notebook?)"}),
    "wrong_name": (5, "graded", True, {"notes": "named 'Untitled.ipynb', expected demo_lab.ipynb; graded anyway"}),
    "endless": (3, "graded", False, {T1: "ran longer than the 5 s limit and was stopped", T2: "passed"}),
    "swallow_interrupt": (0, "graded", True, {T1: "did not stop when interrupted", T2: "not run: the kernel was stopped"}),
    "memory_bomb": (3, "graded", False, {T1: "ran out of memory (the sandbox limit)", T2: "passed"}),
    "fork_bomb": (0, "graded", True, {T1: "; the kernel was stopped", T2: "not run: the kernel was stopped"}),
    "disk_fill": (5, "graded", False, {}),
    "exit_os": (2, "graded", True, {T1: "passed", T2: NOT_RUN}),
    "exit_sys": (3, "graded", False, {T1: "a test failed (SystemExit)"}),  # the notebook's words are not shown
    "exit_quit": (0, "graded", True, {T1: "the kernel died", T2: NOT_RUN}),  # ipykernel's exit() stops its loop
    "segfault": (0, "graded", True, {T1: "the kernel died while this cell ran", T2: NOT_RUN}),
    "ctypes_null": (2, "graded", True, {T2: "the kernel died while this cell ran"}),
    "missing_import": (3, "graded", False, {T1: "a test failed (NameError)"}),
    "patch_numpy": (2, "graded", True, {T2: "normalize([3, 4]) should be [0.6, 0.8]",
                                        "notes": "numpy.allclose, numpy.linalg.norm); the grader put the originals back"}),
    "patch_timer": (2, "graded", True, {T2: "normalize is too slow", "notes": "(time.perf_counter)"}),
    "transformer_pass": (0, "graded", True, {T1: "add(1, 1) should be 2", "notes": "IPython input_transformers_post"}),
    "ast_no_asserts": (0, "graded", True, {T1: "add(1, 1) should be 2", "notes": "IPython ast_transformers"}),
    "swallow_failures": (0, "graded", True, {T1: "add(1, 1) should be 2", "notes": "IPython custom exception handler"}),
    "hook_repatch": (2, "graded", True, {T2: "normalize([3, 4]) should be [0.6, 0.8]", "notes": "IPython event hooks"}),
    "thread_repatch": (2, "graded", True, {T2: "normalize([3, 4]) should be [0.6, 0.8]", "notes": "thread"}),
    "leak_tests": (0, "graded", True, {T1: "a test failed", "notes": "IPython input_transformers_post"}),
    "redefine_helper": (2, "graded", True, {T2: "normalize([3, 4]) should be [0.6, 0.8]", "notes": "(check_close)"}),
    "read_hidden": (3, "graded", False, {T1: "a test failed (FileNotFoundError)"}),
    "write_gradebook": (5, "graded", False, {}),  # add() adds 100 per file it could write
    "network": (3, "graded", False, {T1: "a test failed"}),
    "kill_grader": (5, "graded", False, {}),
    "fake_metrics": (0, "graded", False, {T1: "not answered yet"}),
    "deleted_tests": (3, "graded", False, {T1: "add must work with negative numbers",
                                           "notes": "were deleted from the notebook; the grader put them back and ran them"}),
    "edited_locked": (0, "graded", False, {T1: "add(1, 1) should be 2", T2: "normalize([3, 4]) should be [0.6, 0.8]"}),
    "duplicate_ids": (3, "graded", True, {T1: "add(1, 1) should be 2", "notes": "cells shared the grade ids ['test_task1_add']"}),
    "flood_output": (5, "graded", False, {}),
    "malicious": (5, "graded", False, {}),
}
REVIEW = sorted(s for s, (_, _, review, _) in EXPECTED.items() if review)


def test_the_catalogue_is_complete():
    assert set(EXPECTED) == set(make_samples.CATALOGUE) | {make_samples.GIANT}
    hostile_or_broken = set(EXPECTED) - {"good", "partial", "partial_rounding", "warns_stderr", "blank"}
    assert len(hostile_or_broken) >= 25


@pytest.mark.parametrize("student", sorted(EXPECTED))
def test_every_submission_gets_its_grade_and_reason(batch, student):
    score, status, review, reasons = EXPECTED[student]
    r = batch["report"].by_student()[student]
    assert (r.score, r.status, r.needs_review) == (score, status, review), (r.notes, r.cells)
    for where, text in reasons.items():
        got = " | ".join(r.notes) if where == "notes" else r.cells[where].reason
        assert text in got, (where, got)


def test_no_student_facing_file_quotes_a_hidden_test(batch):
    """Hidden test lines never reach feedback, even spelled with invisible characters between their letters."""
    import re

    from optcourse.autograde.pipeline import HIDDEN_RE

    nb = nbformat.read(batch["source"] / "demo_lab" / "demo_lab.ipynb", as_version=4)
    hidden = [ln.strip() for c in nb.cells for block in HIDDEN_RE.findall(c.source) for ln in block.splitlines()
              if len(ln.strip()) >= 12]
    assert hidden
    invisible = re.compile(r"[\u200b-\u200f\u2060-\u206f\ufeff\u00ad]")
    for page in (batch["out"] / "feedback").glob("*.html"):
        text = invisible.sub("", page.read_text())
        assert not [h for h in hidden if h in text], page.name


def test_a_warning_in_a_test_is_a_note_not_a_zero(batch):
    r = batch["report"].by_student()["warns_stderr"]
    assert r.cells[T1].note == "a warning was printed while this test ran (no points lost): UserWarning: add was called"
    assert "UserWarning: add was called" in (batch["out"] / "feedback" / "warns_stderr.html").read_text()
    assert not batch["report"].by_student()["good"].cells[T1].note


def test_batch_lists_who_needs_a_look(batch):
    report = batch["report"]
    assert sorted(report.by_student()) == sorted(EXPECTED)
    assert report.needs_review == REVIEW
    rows = {line.split()[0]: line for line in report.table.splitlines()[2:]}
    assert all(("YES" in rows[s]) == (s in REVIEW) for s in EXPECTED)
    assert (batch["out"] / "summary.txt").read_text().strip() == report.table.strip()


def test_the_cli_exit_code_says_when_a_look_is_needed(batch, tmp_path, capsys):
    from optcourse.autograde.__main__ import main

    subs = make_samples.nbgrader_layout(SAMPLES / "submissions", tmp_path / "submitted", ["empty", "broken"])
    rc = main(["demo_lab", str(subs), "--source-dir", str(batch["source"]), "--out", str(tmp_path / "out"),
               "--no-progress"])
    assert rc == 2
    assert "NEEDS AN INSTRUCTOR'S LOOK: broken, empty" in capsys.readouterr().out


def test_disk_and_write_attempts_stay_in_the_sandbox(batch):
    def stdout(student):
        nb = nbformat.read(batch["out"] / "artifacts" / f"{student}.autograded.ipynb", as_version=4)
        return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))

    full = next(line for line in stdout("disk_fill").splitlines() if line.startswith("disk full after"))
    assert int(full.split()[3]) <= 2  # 64 MB files: the sandbox's 128 MB tmpfs, not the host's disk
    assert "wrote []" in stdout("write_gradebook")
    assert "kill 1 PermissionError" in stdout("kill_grader")
    good = (batch["submitted"] / "good" / "demo_lab" / "demo_lab.ipynb").read_bytes()
    assert good == (SAMPLES / "submissions" / "good.ipynb").read_bytes()  # another student's file untouched


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
        for student, (score, _, _, _) in EXPECTED.items():
            assert gb.find_submission("demo_lab", student).score == score, student
    rows = {r["student"]: r for r in csv.DictReader(open(batch["out"] / "grades.csv"))}
    assert rows["partial"]["test_task1_add"] == "0" and rows["partial"]["test_task2_normalize"] == "3"
    assert rows["broken"]["needs_review"] == "yes" and rows["good"]["needs_review"] == "no"
    lms = list(csv.reader(open(batch["out"] / "grades_lms.csv")))
    assert lms[0] == ["SIS Login ID", "demo_lab points"] and ["good", "5"] in lms


def test_feedback_never_shows_hidden_tests(batch):
    for student in EXPECTED:
        html = (batch["out"] / "feedback" / f"{student}.html").read_text()
        for secret in ("SECRET_HIDDEN_MARKER", "BEGIN HIDDEN", "assert add(-4, 9)", "np.arange(1, 6)", "Traceback",
                       "autograde.guard"):
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


ARTIFACT_CELL = "import os\nos.makedirs('outputs', exist_ok=True)\nopen('outputs/result.bin', 'wb').write(b'token')"


def with_cell(src, code, dest):
    nb = nbformat.read(src, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(code))
    nbformat.write(nb, dest)
    return dest


def test_regrading_is_idempotent_reads_zips_and_brings_artifacts_out(batch):
    root = batch["root"]
    good = with_cell(SAMPLES / "submissions" / "good.ipynb", ARTIFACT_CELL, root / "good_art.ipynb")
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
        assert len(gb.assignment_submissions("demo_lab")) == len(EXPECTED)


def test_ray_backend_grades_like_the_local_pool(batch, tmp_path):
    """One Ray task per submission on a local Ray instance (2 CPUs): the same grades and reasons, and the
    artifacts and executed notebooks come back from the tasks."""
    pytest.importorskip("ray")
    names = ["good", "partial", "exit_os", "patch_numpy"]
    subs = make_samples.nbgrader_layout(SAMPLES / "submissions", tmp_path / "submitted", names)
    (subs / "artist" / "demo_lab").mkdir(parents=True)
    with_cell(SAMPLES / "submissions" / "good.ipynb", ARTIFACT_CELL, subs / "artist" / "demo_lab" / "demo_lab.ipynb")
    report = grade_batch("demo_lab", subs, tmp_path / "out", source_dir=batch["source"], workers=2, limits=LIMITS,
                         progress=False, perf_checks=[TokenCheck()], backend="ray", keep_autograded=True)
    res, pool = report.by_student(), batch["report"].by_student()
    assert res["artist"].score == 6 and res["artist"].perf[0].passed
    for name in names:
        r = res[name]
        assert (r.score, r.status, r.needs_review) == (pool[name].score, pool[name].status, pool[name].needs_review)
        assert {g: (c.score, c.reason) for g, c in r.cells.items()} == {
            g: (c.score, c.reason) for g, c in pool[name].cells.items()}, name
        assert "did not save outputs/result.bin" in r.perf[0].reason
        assert (tmp_path / "out" / "artifacts" / f"{name}.autograded.ipynb").is_file()
    assert '"backend": "ray"' in (tmp_path / "out" / "summary.json").read_text()


GPU_CELL = "import os\nprint('CUDA_VISIBLE_DEVICES=' + os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))"


@pytest.fixture
def ray_cluster_with_gpus(tmp_path, monkeypatch):
    """A Ray head of 2 CPUs that declares 2 GPUs (Ray schedules by the declared count: no hardware needed), as
    `ray start` runs on a class-scale cluster, with token authentication (Ray's default for a cluster: the
    driver then needs RAY_AUTH_MODE=token and the token, here ~/.ray/auth_token); stopped by its process group."""
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the head's; the driver (the CLI in the test) sets its own
    import os
    import signal
    import subprocess
    import tempfile
    import time

    from tests.processes import group_alive

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray-gpu-", dir="/tmp")  # short: Ray's Unix sockets live in it
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=2", "--num-gpus=2", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp}"], stdout=open(tmp_path / "ray-head.log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:  # the GCS port answers once the head is up
            assert head.poll() is None, (tmp_path / "ray-head.log").read_text()[-2000:]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the Ray head did not come up in 90 s"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)   # `ray start --block` takes ~30 s to wind down after SIGTERM: nothing here needs it
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        deadline = time.monotonic() + 20
        while group_alive(head.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if group_alive(head.pid):
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_gpu_tasks_get_one_gpu_each_and_the_sandbox_sees_it(tmp_path, ray_cluster_with_gpus):
    """`--backend ray --ray-address ... --gpus-per-task 1` (the CLI, as an instructor runs it against a cluster):
    every submission's task holds one GPU of its own, Ray's CUDA_VISIBLE_DEVICES reaches the kernel inside the
    sandbox, and the grades are right; asking for more GPUs than the cluster has is refused with a clear error
    before anything is graded, instead of queueing forever."""
    import json
    import os
    import subprocess

    source = tmp_path / "source"
    shutil.copytree(SAMPLES / "source", source)
    subs = tmp_path / "submitted"
    for name in ("ann", "bob"):
        (subs / name / "demo_lab").mkdir(parents=True)
        with_cell(SAMPLES / "submissions" / "good.ipynb", GPU_CELL, subs / name / "demo_lab" / "demo_lab.ipynb")

    def cli(out, gpus):
        # Ray reads RAY_AUTH_MODE when it is imported: a fresh process, as an instructor's shell would start it
        return subprocess.run([sys.executable, "-m", "optcourse.autograde", "demo_lab", str(subs), "--out", str(out),
                               "--source-dir", str(source), "--backend", "ray", "--ray-address", ray_cluster_with_gpus,
                               "--gpus-per-task", str(gpus), "--keep-autograded", "--no-progress"],
                              env={**os.environ, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=400)

    run = cli(tmp_path / "out", 1)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["backend"] == "ray" and {s: r["score"] for s, r in summary["students"].items()} == {"ann": 5, "bob": 5}
    seen = []
    for name in ("ann", "bob"):
        executed = nbformat.read(tmp_path / "out" / "artifacts" / f"{name}.autograded.ipynb", as_version=4)
        text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
        seen += [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("CUDA_VISIBLE_DEVICES=")]
    assert len(seen) == 2 and set(seen) <= {"0", "1"}, seen   # one of the two declared GPUs each, never "unset"

    refused = cli(tmp_path / "out3", 3)
    assert refused.returncode == 1 and "asks for 3 GPU(s)" in refused.stderr and "cluster has 2" in refused.stderr, \
        refused.stderr[-2000:]
    assert not (tmp_path / "out3" / "grades.csv").exists()


def test_cells_tagged_skip_when_grading_run_only_for_the_students_a_batch_measures(batch, tmp_path):
    """A given cell that only measures (tagged in the instructor's notebook) is not run while grading, except for
    the students named in ``measure`` (the course's own test of a solution); both still get every point."""
    from nbformat.v4 import new_code_cell

    from optcourse.autograde import catalogue
    from optcourse.autograde.inner import SKIPPED_NOTE
    from optcourse.autograde.pipeline import SKIP_WHEN_GRADING

    source = tmp_path / "source"
    shutil.copytree(batch["source"], source)
    path = source / "demo_lab" / "demo_lab.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(6, new_code_cell("print('MEASURED', 6 * 7)", metadata={"tags": [SKIP_WHEN_GRADING], "nbgrader": {
        "grade": False, "solution": False, "locked": True, "grade_id": "measure_only", "schema_version": 3}}))
    nbformat.write(nb, path)
    subs = tmp_path / "subs"
    subs.mkdir()
    for who in ("measured", "graded"):
        nbformat.write(catalogue.as_submitted(nb), subs / f"{who}.ipynb")
    report = grade_batch("demo_lab", subs, tmp_path / "out", source_dir=source, workers=2, limits=LIMITS,
                         progress=False, perf_checks=[], measure=("measured",), autograded_dir=tmp_path / "ag")
    for who, shown, not_shown in (("measured", "MEASURED 42", SKIPPED_NOTE), ("graded", SKIPPED_NOTE, "MEASURED")):
        res = report.by_student()[who]
        assert (res.status, res.score, res.needs_review) == ("graded", 5, False), (who, res.notes)
        executed = nbformat.read(tmp_path / "ag" / who / "demo_lab" / "demo_lab.ipynb", as_version=4)
        [cell] = [c for c in executed.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "measure_only"]
        text = "".join(o.get("text", "") for o in cell.outputs)
        assert shown.strip() in text and not_shown.strip() not in text, (who, text)


def test_the_skip_tag_is_refused_on_a_test_or_an_answer():
    from optcourse.autograde.pipeline import SKIP_WHEN_GRADING, skipped_cells

    nb = nbformat.read(SAMPLES / "source" / "demo_lab" / "demo_lab.ipynb", as_version=4)
    assert skipped_cells(nb) == set()
    for gid in ("test_task1_add", "task1_add"):
        cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == gid)
        cell.metadata["tags"] = [SKIP_WHEN_GRADING]
        with pytest.raises(ValueError, match="read-only given code cell"):
            skipped_cells(nb)
        cell.metadata["tags"] = []
    given = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "given_helpers")
    given.metadata["tags"] = [SKIP_WHEN_GRADING]
    assert skipped_cells(nb) == {"given_helpers"}
