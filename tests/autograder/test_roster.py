"""The roster (optcourse.autograde.roster): the ids of a Canvas or Moodle bulk download become the students'
logins in grades_lms.csv; whatever does not match is kept and flagged, and a bad roster stops before grading.

The sample downloads follow the LMSs' documented names: Canvas's "Download Submissions" zip names each file
``<sortable name lowercased, no spaces>[_LATE]_<user id>_<submission id>_<file name>``; Moodle's "Download all
submissions" (folder per participant) gives ``<full name>_<participant id>_assignsubmission_file_/<file name>``.
"""
from __future__ import annotations

import csv
import shutil
import zipfile

import pytest

from optcourse.autograde import intake, pipeline
from optcourse.autograde.roster import Roster, RosterError, assign, name_keys
from optcourse.autograde.sandbox import sandbox_available
from optcourse.core.paths import AUTOGRADER_DIR

pytestmark = pytest.mark.timeout(300)
LAB = "demo_lab"
SAMPLES = AUTOGRADER_DIR / "samples" / "demo_lab"
NB = b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'
ROSTER = "login,name,lms_id\njsmith,John Smith,12345\njdoe,Jane Doe,23456\nalopez,Ana María López,\nbwayne,Bruce Wayne,45678\n"


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def canvas_zip(path, files: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def test_canvas_and_moodle_downloads_map_to_logins(tmp_path):
    roster = Roster.load(write(tmp_path / "roster.csv", ROSTER))
    canvas = canvas_zip(tmp_path / "canvas.zip", {
        "smithjohn_12345_678901_demo_lab.ipynb": NB,             # user id on the roster
        "lopezanamaria_LATE_34567_678903_demo_lab-1.ipynb": NB,  # not by id (none given): by name, accents dropped
        "strangereve_99999_678904_demo_lab.ipynb": NB})          # on no row
    subs, missing = assign(intake.collect_submissions(canvas, LAB, tmp_path / "c"), roster)
    by = {s.student: s for s in subs}
    assert set(by) == {"jsmith", "alopez", "strangereve_99999"}
    assert not by["jsmith"].review and "matched on LMS id 12345" in by["jsmith"].notes[-1]
    assert not by["alopez"].review and "matched on name" in by["alopez"].notes[-1]
    assert by["strangereve_99999"].review and "matches no roster row" in by["strangereve_99999"].notes[-1]
    assert missing == ["bwayne", "jdoe"]

    moodle = canvas_zip(tmp_path / "moodle.zip", {
        "John Smith_12345_assignsubmission_file_/demo_lab.ipynb": NB,
        "Jane Doe_23456_assignsubmission_file_/Untitled.ipynb": NB,
        "Bruce Wayne_77777_assignsubmission_file_/notes/demo_lab.ipynb": NB})   # another id: matched by name
    subs, missing = assign(intake.collect_submissions(moodle, LAB, tmp_path / "m"), Roster.load(tmp_path / "roster.csv"))
    assert {s.student for s in subs} == {"jsmith", "jdoe", "bwayne"} and missing == ["alopez"]
    assert not any(s.review for s in subs)


def test_two_submissions_of_one_login_and_ambiguous_names_are_flagged(tmp_path):
    roster = Roster.load(write(tmp_path / "r.csv", "login,name\njsmith,John Smith\njsmith2,Smith John\nmk,Mary Kay\n"))
    subs = [intake.Submission("johnsmith", tmp_path / "a"), intake.Submission("marykay", tmp_path / "b"),
            intake.Submission("Mary_Kay_5", tmp_path / "c"), intake.Submission("mk", tmp_path / "d")]
    subs, missing = assign(subs, roster)
    ids = [s.student for s in subs]
    # John Smith / Smith John squash alike: ambiguous, kept under its own id; the three Mary Kay ones take mk, mk_2, mk_3
    assert ids == ["johnsmith", "mk", "mk_2", "mk_3"] and len(set(ids)) == 4
    assert subs[0].review and "matches 2 roster rows on name (jsmith, jsmith2)" in subs[0].notes[-1]
    assert not subs[1].review and subs[2].review and subs[3].review
    assert "already graded as mk" in subs[2].notes[-1]
    assert missing == ["jsmith", "jsmith2"]


def test_two_submissions_matching_one_row_both_stay(tmp_path):
    roster = Roster.load(write(tmp_path / "r.csv", "login,lms_id\nbob,42\n"))
    subs, _ = assign([intake.Submission("bob", tmp_path / "a"), intake.Submission("robert_42", tmp_path / "b")], roster)
    # "bob" (the file's own name) is the login too: it matches by login; robert_42 matches by id -> a second bob
    assert [s.student for s in subs] == ["bob", "bob_2"] and subs[1].review


@pytest.mark.parametrize("text, message", [
    ("name,lms_id\nJohn,1\n", "must have login and at least one of name, lms_id"),
    ("login\njsmith\n", "must have login and at least one of name, lms_id"),
    ("login,name\n", "lists no student"),
    ("login,name\njsmith,John\njsmith,Jo\n", "line 3: login 'jsmith' also on line 2"),
    ("login,lms_id\na,7\nb,7\n", "line 3: lms_id '7' also on line 2"),
    ("login,lms_id\na,x7\n", "lms_id 'x7' is not a number"),
    ("login,name\n../etc,Evil\n", "login '../etc' is empty or not a plain id"),
    ("login,name\n,Nobody\n", "login '' is empty"),
])
def test_a_bad_roster_is_refused_with_the_reason(tmp_path, text, message):
    with pytest.raises(RosterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Roster.load(write(tmp_path / "r.csv", text))


def test_a_missing_roster_and_a_byte_order_mark(tmp_path):
    with pytest.raises(RosterError, match="not found"):
        Roster.load(tmp_path / "nope.csv")
    roster = Roster.load(write(tmp_path / "bom.csv", "\ufeffLogin,Name\njsmith,John Smith\n"))   # an Excel export
    assert roster.students[0].login == "jsmith" and "smithjohn" in name_keys("John Smith")


def test_a_bad_roster_stops_the_cli_before_anything_is_graded(tmp_path, capsys):
    from optcourse.autograde.__main__ import main

    if not sandbox_available()[0]:
        pytest.skip("the CLI checks the sandbox first")
    subs = canvas_zip(tmp_path / "class.zip", {"smithjohn_12345_1_demo_lab.ipynb": NB})
    code = main([LAB, str(subs), "--out", str(tmp_path / "out"), "--source-dir", str(SAMPLES / "source"),
                 "--roster", str(write(tmp_path / "r.csv", "name\nJohn\n")), "--no-progress"])
    assert code == 1 and "must have login" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_canvas_class_zip_becomes_grades_lms_csv_with_logins(tmp_path):
    """The whole loop on the demo lab, in the sandbox: Canvas download + roster -> grades_lms.csv by login, an
    unknown student kept (and flagged), a roster student without a submission listed with an empty grade."""
    if not sandbox_available()[0]:
        pytest.skip("sandbox unavailable")
    good = (SAMPLES / "submissions" / "good.ipynb").read_bytes()
    blank = (SAMPLES / "submissions" / "blank.ipynb").read_bytes()
    archive = canvas_zip(tmp_path / "submissions.zip", {"smithjohn_12345_678901_demo_lab.ipynb": good,
                                                        "doejane_LATE_23456_678902_demo_lab.ipynb": blank,
                                                        "strangereve_99999_678903_demo_lab.ipynb": good})
    source = tmp_path / "source"
    shutil.copytree(SAMPLES / "source", source)
    report = pipeline.grade_batch(LAB, archive, tmp_path / "out", source_dir=source, workers=2, progress=False,
                                  roster=write(tmp_path / "roster.csv", ROSTER))
    with open(tmp_path / "out" / "grades_lms.csv") as f:
        rows = {r["SIS Login ID"]: r["demo_lab points"] for r in csv.DictReader(f)}
    full = str(int(report.by_student()["jsmith"].max_score))
    assert rows == {"jsmith": full, "jdoe": "0", "strangereve_99999": full, "alopez": "", "bwayne": ""}
    assert report.missing == ["alopez", "bwayne"] and report.needs_review == ["strangereve_99999"]
