"""Fast tests of the autograder's trusted side: inputs, validation of sandbox results, scrubbing, feedback."""
from __future__ import annotations

import pathlib
import zipfile

import pytest

from optcourse.autograde import feedback, intake, pipeline
from optcourse.autograde.sandbox import Limits, _mount_script, sandbox_available

pytestmark = pytest.mark.timeout(60)
LIMITS = Limits(cell_timeout_s=8)


def info(tmp_path) -> pipeline.LabInfo:
    return pipeline.LabInfo("demo_lab", "demo_lab.ipynb", {"test_a": 2.0, "test_b": 3.0, "written": 1.0},
                            {"test_a", "test_b"}, ["SECRET_HIDDEN_MARKER_1 = 12345", 'assert add(-4, 9) == 5, "msg"'],
                            tmp_path, {"test_a", "test_b", "written", "answer_a", "helpers"}, {"helpers"})


def cell(grade_id=None, source="1", **meta):
    import nbformat

    md = {"nbgrader": {"grade_id": grade_id, "schema_version": 3, **meta}} if grade_id else {}
    return nbformat.v4.new_code_cell(source, metadata=md)


def test_student_ids_from_file_names():
    f = pipeline.student_id_from_filename
    assert f("alice.ipynb", "demo_lab") == "alice"
    assert f("alice_demo_lab.ipynb", "demo_lab") == "alice"
    assert f("demo_lab-bob.ipynb", "demo_lab") == "bob"
    assert f("../evil name;rm.ipynb", "demo_lab") == "evil_name_rm"


def test_collect_nbgrader_layout_flat_folder_and_zip(tmp_path):
    sub = tmp_path / "submitted"
    (sub / "alice" / "demo_lab").mkdir(parents=True)
    (sub / "alice" / "demo_lab" / "demo_lab.ipynb").write_text("{}")
    (sub / "bob" / "demo_lab").mkdir(parents=True)
    (sub / "bob" / "demo_lab" / "Untitled.ipynb").write_text("{}")
    got = {s.student: s for s in pipeline.collect_submissions(sub, "demo_lab", tmp_path / "w1")}
    assert set(got) == {"alice", "bob"}
    assert "expected demo_lab.ipynb" in got["bob"].notes[0]
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "carol_demo_lab.ipynb").write_text("{}")
    assert [s.student for s in pipeline.collect_submissions(flat, "demo_lab", tmp_path / "w2")] == ["carol"]
    archive = tmp_path / "class.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../escape/dave.ipynb", "{}")
        zf.writestr("__MACOSX/._dave.ipynb", "junk")
        zf.writestr("notes.txt", "ignored")
    got = pipeline.collect_submissions(archive, "demo_lab", tmp_path / "w3")
    assert [s.student for s in got] == ["dave"]
    assert got[0].path.parent == tmp_path / "w3" / "unzipped"  # no file written outside the work folder
    assert not (tmp_path / "escape").exists()


def test_precheck_reasons(tmp_path):
    import nbformat

    lab = info(tmp_path)
    empty = tmp_path / "empty.ipynb"
    empty.write_text("")
    assert pipeline.precheck(intake.Submission("x", empty), lab)[0] == "the submitted file is empty"
    plain = tmp_path / "plain.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), plain)
    assert "no nbgrader cell metadata" in pipeline.precheck(intake.Submission("x", plain), lab)[0]
    other = tmp_path / "other.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell("test_other", grade=True, points=1)]), other)
    assert "another lab's notebook" in pipeline.precheck(intake.Submission("x", other), lab)[0]


def test_precheck_repairs_duplicate_grade_ids_and_flags_deleted_given_cells(tmp_path):
    import nbformat

    lab = info(tmp_path)
    path = tmp_path / "dup.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[
        cell("answer_a", "x = 1", solution=True), cell("test_a", "pass"), cell("test_a", "assert x == 1")]), path)
    sub = intake.Submission("d", path)
    assert pipeline.precheck(sub, lab, tmp_path / "work") == (None, ["x = 1"])
    assert sub.review and sub.path == tmp_path / "work" / "sanitized" / "d.ipynb"
    fixed = nbformat.read(sub.path, as_version=4)
    assert [c.metadata.get("nbgrader", {}).get("grade_id") for c in fixed.cells] == ["answer_a", "test_a", None]
    assert "cells shared the grade ids ['test_a']" in sub.notes[0]
    assert "read-only cells of the lab were deleted: ['helpers']" in sub.notes[1]


def test_forged_sandbox_results_are_clamped_and_flagged(tmp_path):
    lab = info(tmp_path)
    out = {"result": {"cells": {"test_a": {"score": 99, "max": 99}, "test_b": {"score": "lots"},
                                "written": {"score": None}, "bonus": {"score": 50, "max": 50}},
                      "errors": {"test_b": ["AssertionError", ""]}}}
    res = pipeline.interpret(intake.Submission("eve", tmp_path / "x.ipynb"), out, lab, LIMITS)
    assert res.cells["test_a"].score == 2.0  # never more than the instructor's points
    assert res.cells["test_b"].score == 0.0 and res.cells["test_b"].reason == "a test failed (AssertionError)"
    assert res.cells["written"].score is None
    assert "bonus" not in res.cells and res.needs_review
    assert res.max_score == 6.0


def test_timeouts_and_missing_results(tmp_path):
    lab = info(tmp_path)
    sub = intake.Submission("t", tmp_path / "x.ipynb")
    res = pipeline.interpret(sub, {"result": None, "timed_out": True}, lab, LIMITS)
    assert res.status == "timeout" and res.needs_review and res.score == 0
    res = pipeline.interpret(sub, {"result": None, "timed_out": False}, lab, LIMITS)
    assert res.status == "error" and res.needs_review
    res = pipeline.interpret(sub, {"result": {"ok": False, "cells": {"test_a": {"score": 2}}}}, lab, LIMITS)
    assert res.status == "error" and res.score == 0  # nbgrader failed: nothing it saved is trusted
    out = {"result": {"cells": {"test_a": {"score": 0}, "test_b": {"score": 3}},
                      "errors": {"test_a": ["KeyboardInterrupt", ""]}}}
    res = pipeline.interpret(sub, out, lab, LIMITS)
    assert "8 s limit" in res.cells["test_a"].reason and res.cells["test_b"].reason == "passed"
    assert "the cell is missing" in res.cells["written"].reason
    assert not res.needs_review


def test_kernel_deaths_stderr_and_guard_reports(tmp_path):
    lab = info(tmp_path)
    sub = intake.Submission("k", tmp_path / "x.ipynb")
    out = {"result": {"ok": True, "cells": {"test_a": {"score": 2}, "test_b": {"score": None}, "written": {"score": None}},
                      "notes": {"test_a": "/tmp/ipykernel_1/2.py:4: UserWarning: careful"},
                      "errors": {"test_b": ["KernelDied", "the kernel died while this cell ran"]},
                      "guarded": {"test_a": "numpy.allclose, check_close", "bogus": "x"}, "readded": ["test_b", "zzz"]}}
    res = pipeline.interpret(sub, out, lab, LIMITS)
    assert (res.cells["test_a"].score, res.cells["test_a"].reason) == (2.0, "passed")  # a warning costs nothing
    assert res.cells["test_a"].note.endswith("(no points lost): UserWarning: careful")
    assert "UserWarning: careful" in feedback.render("demo_lab", res, lab.hidden)
    assert (res.cells["test_b"].score, res.cells["test_b"].reason) == (0.0, "the kernel died while this cell ran")
    assert res.cells["written"].score is None  # a written answer still waits for an instructor
    notes = " | ".join(res.notes)
    assert "(check_close, numpy.allclose)" in notes and "bogus" not in notes
    assert "test cells ['test_b'] were deleted" in notes and "zzz" not in notes
    assert "test_b: the kernel died" in notes and res.needs_review


def test_guard_puts_back_replaced_functions_and_given_helpers(monkeypatch, capsys):
    import functools
    import time

    import numpy as np

    from optcourse.autograde import guard

    user_ns = {}
    monkeypatch.setattr(guard, "_user_ns", lambda: user_ns)
    monkeypatch.setattr(guard, "_given", {})
    guard.install()
    guard.given_start()
    exec("def check_close(a, b, msg):\n    assert a == b, msg", user_ns)
    guard.given_end()
    helper, allclose, perf_counter = user_ns["check_close"], np.allclose, time.perf_counter
    try:
        np.allclose, time.perf_counter = (lambda *a, **k: True), (lambda: 0.0)
        user_ns["check_close"] = lambda *a: None
        assert guard.before_test() == "check_close, numpy.allclose, time.perf_counter"
        assert np.allclose is allclose and time.perf_counter is perf_counter and user_ns["check_close"] is helper
        assert guard.before_test() == ""  # nothing replaced: nothing said
        sleep = time.sleep  # what `import torch._dynamo` does to torch.manual_seed: a library's wrapper
        time.sleep = functools.wraps(sleep)(lambda *a: sleep(*a))
        assert guard.before_test() == "" and time.sleep is sleep  # put back, but no tampering to report
        time.tzset()  # what `import pandas` does: rebinds the data attribute time.tzname, which is no tampering
        time.tzname = tuple(time.tzname)
        assert guard.before_test() == ""
    finally:
        np.allclose, time.perf_counter = allclose, perf_counter


def test_ray_results_cannot_write_outside_their_student(tmp_path):
    from optcourse.autograde import raybackend

    outcome = {"files": {"alice/outputs__m.onnx": b"m", "alice.autograded.ipynb": b"{}", "bob/x": b"no",
                         "alice/../bob/y": b"no", "../escape": b"no"}}
    raybackend._unpack_files(outcome, tmp_path, "alice")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "alice.autograded.ipynb", "alice/outputs__m.onnx"]
    assert "files" not in outcome


def test_scrub_withholds_hidden_code_and_ansi(tmp_path):
    lab = info(tmp_path)
    assert pipeline.scrub("\x1b[0;31mboom\x1b[0m", lab.hidden) == "boom"
    leak = 'it was: assert add(-4, 9) == 5, "msg"'
    assert "withheld" in pipeline.scrub(leak, lab.hidden)
    assert pipeline.scrub("x" * 1000, lab.hidden).endswith(" ...")


def test_feedback_escapes_and_hides(tmp_path):
    lab = info(tmp_path)
    res = pipeline.StudentResult("s<1>", "graded", {
        "test_a": pipeline.CellGrade("test_a", 0.0, 2.0, "<script>alert(1)</script>"),
        "test_b": pipeline.CellGrade("test_b", 3.0, 3.0, "SECRET_HIDDEN_MARKER_1 = 12345")})
    html = feedback.render("demo_lab", res, lab.hidden)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "SECRET_HIDDEN_MARKER_1" not in html
    assert "Score: 3 / 5" in html


def test_sandbox_mount_plan_hides_the_repository():
    script = _mount_script("/x/root", "/x/grading", Limits(work_bytes=1 << 20))
    # pivot_root and the host's tree detached (not chroot: a user namespace cannot be made in a chroot)
    assert "pivot_root" in script and "umount -l /.host" in script and "chroot" not in script
    assert "optcourse.autograde.userns" not in script
    owned = _mount_script("/x/root", "/x/grading", Limits(work_bytes=1 << 20), uid=720003, owner=900006)
    assert "-m optcourse.autograde.userns /proc 900006 720003 -- " in owned  # its root is host uid 900006
    assert 'mode=0700,size=1048576,uid=900006,gid=900006 tmpfs "$N"/grading/work' in owned
    for sub in ("autograded", "work", "home"):  # nbgrader's output and the student's writable folders are tmpfs
        assert f"mode=0700,size=1048576 tmpfs \"$N\"/grading/{sub}" in script
    assert 'mount -o remount,bind,ro "$N"/proc/sys' in script
    assert "0x8914" in script and " link set " not in script  # loopback up without iproute2 (bare GPU images)
    assert "/dev/nvidia" not in script
    assert str(pathlib.Path(pipeline.__file__).resolve().parents[2] / "solutions") not in script
    assert "/grading" in script and "mount -t proc" in script
    ok, why = sandbox_available()
    assert isinstance(ok, bool) and why


def test_stderr_of_a_test_cell_becomes_a_note_and_errors_still_fail():
    import nbformat
    from nbgrader.utils import determine_grade

    from optcourse.autograde.stderr_notes import NOTE, StderrAsNotes

    warned = cell("test_a", "x = 1", grade=True, points=2)
    warned.outputs = [nbformat.v4.new_output("stream", name="stderr", text="x.py:1: UserWarning: careful\n")]
    assert determine_grade(warned)[0] == 0  # what nbgrader does on its own
    StderrAsNotes().preprocess_cell(warned, {}, 0)
    assert determine_grade(warned) == (2.0, 2.0)
    assert warned.outputs[0].name == "stdout" and warned.outputs[0].text.startswith(NOTE)
    failed = cell("test_b", "assert False", grade=True, points=3)
    failed.outputs = [nbformat.v4.new_output("stream", name="stderr", text="w\n"),
                      nbformat.v4.new_output("error", ename="AssertionError", evalue="no", traceback=[])]
    StderrAsNotes().preprocess_cell(failed, {}, 0)
    assert determine_grade(failed) == (0, 3.0)
    answer = cell("answer_a", "y = 2", solution=True)  # not a test cell: untouched
    answer.outputs = [nbformat.v4.new_output("stream", name="stderr", text="w\n")]
    StderrAsNotes().preprocess_cell(answer, {}, 0)
    assert answer.outputs[0].name == "stderr"


def test_lab_limits_come_from_the_instructor_source(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(metadata={"optcourse": {"grading": {"cell_timeout_s": 600, "memory_gb": 6}}})
    lab = info(tmp_path)
    lab.limits = pipeline.lab_limits(nb)
    limits = pipeline.limits_for(lab)
    assert (limits.cell_timeout_s, limits.memory_bytes) == (600, 6 << 30)
    assert limits.notebook_timeout_s == 600  # never shorter than one cell
    limits = pipeline.limits_for(lab, cell_timeout_s=30, notebook_timeout_s=100)
    assert (limits.cell_timeout_s, limits.notebook_timeout_s, limits.memory_bytes) == (30, 100, 6 << 30)
    assert pipeline.limits_for(info(tmp_path)) == Limits()
    for bad in ({"cell_timeout": 5}, {"cell_timeout_s": 0}):
        with pytest.raises(ValueError):
            pipeline.lab_limits(nbformat.v4.new_notebook(metadata={"optcourse": {"grading": bad}}))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the stopped thread's SystemExit
def test_guard_undoes_what_a_notebook_does_to_ipython_itself(monkeypatch):
    """Input and AST transformers, event hooks, a custom exception handler, a patched shell method and a thread
    that re-patches: all undone before a test, so the test's assert still fails a wrong answer."""
    import ast
    import threading
    import time

    import numpy as np
    from IPython.core.interactiveshell import InteractiveShell

    from optcourse.autograde import guard

    shell = InteractiveShell.instance()
    monkeypatch.setattr(guard, "_shell", lambda: shell)
    monkeypatch.setattr(guard, "_machinery", {})
    monkeypatch.setattr(guard, "_originals", {})
    allclose = np.allclose
    guard.install()

    class DropAsserts(ast.NodeTransformer):
        def visit_Assert(self, node):
            return ast.Pass()

    stop = threading.Event()
    code = compile("def repatch(np, stop):\n    while not stop.is_set():\n        np.allclose = lambda *a, **k: True\n",
                   "/tmp/ipykernel_1/99.py", "exec")  # a function defined in a notebook cell
    scope = {}
    exec(code, scope)
    exec(compile("def hook(info):\n    pass\n", "/tmp/ipykernel_1/98.py", "exec"), scope)
    thread = threading.Thread(target=scope["repatch"], args=(np, stop), daemon=True)
    try:
        shell.input_transformers_post.append(lambda lines: ["pass\n"])
        shell.ast_transformers.append(DropAsserts())
        shell.events.register("pre_run_cell", scope["hook"])
        shell.events.register("post_run_cell", lambda result: None)  # a library's hook: removed, not reported
        shell.set_custom_exc((AssertionError,), lambda *a, **k: None)
        shell.run_cell = lambda *a, **k: None
        thread.start()
        time.sleep(0.05)
        said = guard.before_test()
        for what in ("IPython input_transformers_post", "IPython ast_transformers", "IPython event hooks (pre_run_cell)",
                     "IPython custom exception handler", "shell.run_cell", "thread"):
            assert what in said, (what, said)
        assert not thread.is_alive() and np.allclose is allclose and "post_run_cell" not in said
        result = shell.run_cell("assert np_allclose(1, 2), 'the test ran'", store_history=False)
        assert isinstance(result.error_in_exec, NameError)  # the cell ran as written (not `pass`)
        shell.user_ns["np_allclose"] = np.allclose
        result = shell.run_cell("assert np_allclose(1, 2), 'the test ran'", store_history=False)
        assert isinstance(result.error_in_exec, AssertionError)  # the assert kept, the failure not swallowed
        assert guard.before_test() == ""
    finally:
        stop.set()
        np.allclose = allclose
        InteractiveShell.clear_instance()


def test_feedback_shows_only_the_tests_own_messages(tmp_path):
    lab = info(tmp_path)
    lab.hidden = ["assert add(-4, 9) == 5, f'add must work with negative numbers: got {got}'"]
    lab.messages = pipeline.test_messages([
        "assert add(1, 1) == 2, 'add(1, 1) should be 2'\n%time x = 1\n",
        "got = add(-4, 9)\nassert got == 5, f'add must work with negative numbers: got {got}'"])
    reason = lambda ename, evalue: pipeline._reason(ename, evalue, lab, LIMITS)  # noqa: E731
    assert reason("AssertionError", "add(1, 1) should be 2") == "AssertionError: add(1, 1) should be 2"
    assert reason("AssertionError", "add must work with negative numbers: got -13") == (
        "AssertionError: add must work with negative numbers: got -13")
    leak = "assert add(-4, 9) == 5, f'add must work with negative numbers: got {got}'"
    assert reason("AssertionError", "\u200b".join(leak)) == "a test failed (AssertionError)"  # the test's source
    assert reason("AssertionError", "add must work with negative numbers: got " + leak) == "a test failed (AssertionError)"
    assert reason("TypeError", "unsupported operand") == "a test failed (TypeError)"  # the notebook's own words
    assert reason("SecretHiddenLine", "add(1, 1) should be 2") == "Error: add(1, 1) should be 2"
    assert reason("SecretHiddenLine", "x") == "a test failed"  # a notebook's own exception class: no name shown
    assert reason("NotImplementedError", "") == "not answered yet (NotImplementedError)"
    assert reason("KernelDied", "the kernel died") == "the kernel died"  # written by the grader (inner.py)


FORGED = "boom\r\x1b[2K\x1b[1Azed         20/20  graded\n\x9b2Kmallory  20/20  graded\x1b]0;pwned\x07\u202eevil\u200b\x85x"


def controls(text: str) -> set[str]:
    import unicodedata

    return {ch for ch in text if ch not in "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")}


def test_plain_strips_escape_sequences_and_control_characters():
    assert feedback.plain("\x1b[0;31mred\x1b[0m ok\r\nnext") == "red ok next"
    assert feedback.plain("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ \x1b(B\x9b31mz\x07") == "link z"
    assert feedback.plain("a\u202eb\u200bc\x00d\x7fe\u2028f") == "abcde f"
    assert feedback.plain("def f():\r\n\treturn 1\x1b[2J", newlines=True) == "def f():\n\treturn 1"
    assert controls(feedback.plain(FORGED)) == set() and "\n" not in feedback.plain(FORGED)


def test_a_forged_message_cannot_add_a_row_to_the_instructors_summary(tmp_path):
    import csv
    import dataclasses
    import json

    from optcourse.autograde.perf import CheckResult

    lab = info(tmp_path)
    out = {"result": {"cells": {"test_a": {"score": 0}, "test_b": {"score": 3}},
                      "errors": {"test_a": ["AssertionError", FORGED]}, "guarded": {"test_a": FORGED}}}
    eve = pipeline.interpret(intake.Submission("eve", tmp_path / "x.ipynb", [FORGED]), out, lab, LIMITS)
    eve.perf = [CheckResult("speed\r", 0.0, 1.0, False, FORGED, {"note": FORGED})]
    eve.code = ["x = 1\r\n\x1b[2Jy = 2"]
    amy = pipeline.StudentResult("amy", "graded", {g: pipeline.CellGrade(g, p, p, "passed") for g, p in lab.points.items()})
    for res in (eve, amy):
        feedback.clean_result(res)
    table = pipeline.summary_table(lab, [eve, amy])
    lines = table.split("\n")
    assert len(lines) == 4 and [line.split()[0] for line in lines[2:]] == ["amy", "eve"]
    assert controls(table) == set() and "\r" not in table
    assert json.dumps(dataclasses.asdict(eve)).count("\\u") == 0  # summary.json: nothing escaped, nothing hidden
    pipeline.write_csv(tmp_path / "g.csv", lab, [eve, amy])
    pipeline.write_lms_csv(tmp_path / "lms.csv", "demo_lab", [eve, amy])
    for name in ("g.csv", "lms.csv"):
        text = (tmp_path / name).read_text()
        assert controls(text.replace("\r\n", "\n")) == set()
        assert len(list(csv.reader(open(tmp_path / name)))) == 3  # a header and two rows
    html = feedback.render("demo_lab", eve, lab.hidden)
    assert controls(html) == set() and "x = 1\ny = 2" in html
    eve.notes = ["=HYPERLINK(\"http://x\")"]  # a spreadsheet never runs a note as a formula
    pipeline.write_csv(tmp_path / "f.csv", lab, [eve])
    assert list(csv.DictReader(open(tmp_path / "f.csv")))[0]["notes"].startswith("'=")


def _run_cells(nb) -> dict:
    namespace: dict = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            exec(cell.source, namespace)  # noqa: S102 - the test's own cells
    return namespace


@pytest.mark.parametrize("tags", [["parameters"], []])
def test_the_graded_run_uses_the_instructors_parameters(tags):
    """A submission whose parameters cell asks for full size (or that dropped the cell's tag) is run with the
    instructor's values: they are injected right after it, before anything reads them."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    from optcourse.autograde.inner import INJECTED_TAG, inject_parameters
    from optcourse.autograde.tester import parameters_source

    source = new_notebook(cells=[new_markdown_cell("# lab"), new_code_cell("smoke = True\nmodel_path = None",
                                                                          metadata={"tags": ["parameters"]})])
    student = nbformat.from_dict(source)
    student.cells[1] = new_code_cell("smoke = False\nmodel_path = '/big/model'", metadata={"tags": tags})
    student.cells.append(new_code_cell("size = 10 if smoke else 10_000"))
    inject_parameters(student, parameters_source(source))
    assert INJECTED_TAG in student.cells[2].metadata["tags"]
    values = _run_cells(student)
    assert (values["smoke"], values["model_path"], values["size"]) == (True, None, 10)


def test_the_lms_file_leaves_a_submission_that_was_not_graded_blank(tmp_path):
    import csv

    graded = pipeline.StudentResult("amy", "graded", {"t": pipeline.CellGrade("t", 0.0, 2.0, "a test failed")})
    invalid = pipeline.StudentResult("bob", "invalid", {"t": pipeline.CellGrade("t", 0.0, 2.0, "not graded")},
                                     needs_review=True)
    late = pipeline.StudentResult("cat", "timeout", {"t": pipeline.CellGrade("t", 0.0, 2.0, "not graded")},
                                  needs_review=True)
    pipeline.write_lms_csv(tmp_path / "lms.csv", "demo_lab", [late, invalid, graded])
    rows = list(csv.reader(open(tmp_path / "lms.csv")))
    assert rows == [["SIS Login ID", "demo_lab points"], ["amy", "0"], ["bob", ""], ["cat", ""]]


def test_the_instructors_source_handed_in_is_flagged_and_a_students_copy_is_not(tmp_path):
    import nbformat

    from optcourse.autograde import catalogue

    lab = info(tmp_path)
    source = nbformat.v4.new_notebook(cells=[
        cell("answer_a", "x = 1\n### BEGIN SOLUTION\nx = 2\n### END SOLUTION", solution=True),
        cell("test_a", "assert x == 2\n### BEGIN HIDDEN TESTS\nassert x > 1\n### END HIDDEN TESTS"),
        cell("helpers", "def helper(): pass")])
    verbatim, student = tmp_path / "verbatim.ipynb", tmp_path / "student.ipynb"
    nbformat.write(source, verbatim)
    nbformat.write(catalogue.as_submitted(source), student)
    flagged = intake.Submission("v", verbatim)
    assert pipeline.precheck(flagged, lab)[0] is None and flagged.review
    assert "instructor's source markers" in flagged.notes[-1]
    kept = intake.Submission("s", student)
    problem, answers = pipeline.precheck(kept, lab)
    assert problem is None and [a.rstrip() for a in answers] == ["x = 1\nx = 2"] and not kept.review and not kept.notes
    assert [c.source for c in nbformat.read(student, as_version=4).cells][1] == "assert x == 2"


def test_a_failed_cell_loses_what_it_started_and_keeps_what_ran_before(monkeypatch):
    """What a failed cell left running is killed (stopped first: a fork bomb cannot outrun it); the kernel and
    processes that ran before the cell (a server an earlier cell started) are kept; a pid reused by a new
    process during the cell is a new process."""
    from optcourse.autograde import inner

    now = {(10, "100"), (11, "101"), (12, "500"), (13, "501")}   # kernel 10, server 11 from before; 12 new; 13 reused
    before = {(10, "100"), (11, "101"), (13, "102")}
    signals = []
    monkeypatch.setattr(inner, "_processes", lambda uid: set(now))
    monkeypatch.setattr(inner.os, "kill", lambda pid, sig: signals.append((pid, sig)))
    assert inner._kill_strays(7, spare=10, keep=before) == 2
    assert {pid for pid, _ in signals} == {12, 13}
    signals.clear()
    assert inner._kill_strays(7, spare=None) == 4   # the kernel stopped too: everything goes
    assert {pid for pid, _ in signals} == {10, 11, 12, 13}


def test_processes_lists_a_uid_with_start_times():
    import os

    from optcourse.autograde import inner

    mine = inner._processes(os.getuid())
    assert any(pid == os.getpid() for pid, _ in mine) and all(start.isdigit() for _, start in mine)
