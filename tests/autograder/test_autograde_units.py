"""Fast tests of the autograder's trusted side: inputs, validation of sandbox results, scrubbing, feedback."""
from __future__ import annotations

import pathlib
import zipfile

import pytest

from optcourse.autograde import feedback, pipeline
from optcourse.autograde.sandbox import Limits, _mount_script, sandbox_available

pytestmark = pytest.mark.timeout(60)
LIMITS = Limits(cell_timeout_s=8)


def info(tmp_path) -> pipeline.LabInfo:
    return pipeline.LabInfo("demo_lab", "demo_lab.ipynb", {"test_a": 2.0, "test_b": 3.0, "written": 1.0},
                            {"test_a", "test_b"}, ["SECRET_HIDDEN_MARKER_1 = 12345", 'assert add(-4, 9) == 5, "msg"'],
                            tmp_path)


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
    lab = info(tmp_path)
    empty = tmp_path / "empty.ipynb"
    empty.write_text("")
    assert pipeline.precheck(pipeline.Submission("x", empty), lab)[0] == "the submitted file is empty"
    other = tmp_path / "other.ipynb"
    import nbformat

    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), other)
    assert "right lab" in pipeline.precheck(pipeline.Submission("x", other), lab)[0]


def test_forged_sandbox_results_are_clamped_and_flagged(tmp_path):
    lab = info(tmp_path)
    out = {"result": {"cells": {"test_a": {"score": 99, "max": 99}, "test_b": {"score": "lots"},
                                "written": {"score": None}, "bonus": {"score": 50, "max": 50}},
                      "errors": {"test_b": ["AssertionError", ""]}}}
    res = pipeline.interpret(pipeline.Submission("eve", tmp_path / "x.ipynb"), out, lab, LIMITS)
    assert res.cells["test_a"].score == 2.0  # never more than the instructor's points
    assert res.cells["test_b"].score == 0.0 and "without a message" in res.cells["test_b"].reason
    assert res.cells["written"].score is None
    assert "bonus" not in res.cells and res.needs_review
    assert res.max_score == 6.0


def test_timeouts_and_missing_results(tmp_path):
    lab = info(tmp_path)
    sub = pipeline.Submission("t", tmp_path / "x.ipynb")
    res = pipeline.interpret(sub, {"result": None, "timed_out": True}, lab, LIMITS)
    assert res.status == "timeout" and res.needs_review and res.score == 0
    res = pipeline.interpret(sub, {"result": None, "timed_out": False}, lab, LIMITS)
    assert res.status == "error" and res.needs_review
    out = {"result": {"cells": {"test_a": {"score": 0}, "test_b": {"score": 3}},
                      "errors": {"test_a": ["KeyboardInterrupt", ""]}}}
    res = pipeline.interpret(sub, out, lab, LIMITS)
    assert "8 s limit" in res.cells["test_a"].reason and res.cells["test_b"].reason == "passed"
    assert "the cell is missing" in res.cells["written"].reason


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
    script = _mount_script("/x/root", "/x/grading", Limits())
    assert "unshare" not in script and "chroot" in script
    assert str(pathlib.Path(pipeline.__file__).resolve().parents[2] / "solutions") not in script
    assert "/grading" in script and "mount -t proc" in script
    ok, why = sandbox_available()
    assert isinstance(ok, bool) and why
