"""Intake (optcourse.autograde.intake): whatever is in the class download, every other student is graded,
no id overwrites another, and the LMS's names are kept."""
from __future__ import annotations

import os
import pathlib
import time
import zipfile

import pytest

from optcourse.autograde import intake, pipeline

pytestmark = pytest.mark.timeout(120)
LAB = "demo_lab"
NB = b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'


def by_id(subs):
    return {s.student: s for s in subs}


def valid(sub) -> bool:
    return sub.path.is_file()


def test_pipeline_uses_intake():
    assert pipeline.collect_submissions is intake.collect_submissions
    assert pipeline.student_id_from_filename is intake.student_id_from_filename
    assert issubclass(intake.IntakeError, ValueError)  # the CLI prints it and exits 1 before grading


def corrupt(archive: pathlib.Path, marker: bytes) -> None:
    """Flip one byte of a stored entry's content: its CRC-32 no longer matches."""
    data = bytearray(archive.read_bytes())
    i = data.index(marker)
    data[i] ^= 0xFF
    archive.write_bytes(bytes(data))


def test_a_broken_entry_is_one_students_invalid_submission(tmp_path):
    archive = tmp_path / "class.zip"
    long_name = "x" * 300 + "_demo_lab.ipynb"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("alice_demo_lab.ipynb", NB)
        zf.writestr("bob_demo_lab.ipynb", NB.replace(b"[]", b'[ ]') + b"BOB_CONTENT_MARK")
        zf.writestr(long_name, NB)
        zf.writestr("carol.ipynb", NB)
    corrupt(archive, b"BOB_CONTENT_MARK")
    subs = by_id(pipeline.collect_submissions(archive, LAB, tmp_path / "w"))
    assert valid(subs["alice"]) and valid(subs["carol"])
    assert subs["alice"].path.read_bytes() == NB and not subs["alice"].review
    bob = subs["bob"]
    assert not valid(bob) and bob.review and "bad CRC-32" in bob.notes[0]
    [long_id] = [s for s in subs if s.startswith("xxx")]
    assert len(long_id) <= intake.MAX_ID_CHARS and valid(subs[long_id]) and subs[long_id].review
    assert "characters long" in subs[long_id].notes[0]
    assert sorted(p.name for p in (tmp_path / "w" / "unzipped").iterdir()) == sorted(
        f"{s}.ipynb" for s in subs if s != "bob")  # named after the ids, nothing else left


def test_a_zip_bomb_is_refused_with_a_reason(tmp_path):
    archive = tmp_path / "class.zip"
    start = time.monotonic()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("alice.ipynb", NB)
        with zf.open("mallory_demo_lab.ipynb", "w", force_zip64=True) as f:  # 797 MB of zeros
            chunk = b"\0" * (1 << 20)
            for _ in range(797):
                f.write(chunk)
    assert archive.stat().st_size < 1 << 20
    subs = by_id(pipeline.collect_submissions(archive, LAB, tmp_path / "w"))
    assert valid(subs["alice"])
    mallory = subs["mallory"]
    assert not valid(mallory) and mallory.review and "unpacks to 797 MB" in mallory.notes[0]
    assert sum(f.stat().st_size for f in (tmp_path / "w").rglob("*") if f.is_file()) < 1 << 20  # nothing unpacked
    # many entries under the per-entry cap that compress implausibly well: each refused, on its own
    archive2 = tmp_path / "ratio.zip"
    with zipfile.ZipFile(archive2, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("alice.ipynb", NB)
        for i in range(3):
            zf.writestr(f"m{i}.ipynb", b" " * (10 << 20))
    subs = by_id(pipeline.collect_submissions(archive2, LAB, tmp_path / "w2"))
    assert valid(subs["alice"]) and all("-fold" in subs[f"m{i}"].notes[0] for i in range(3))
    # the total cap refuses the archive as a whole, before anything is unpacked
    with pytest.raises(intake.IntakeError, match="unpacks to .* of notebooks, more than the .* allowed"):
        pipeline.collect_submissions(archive2, LAB, tmp_path / "w3", max_total_bytes=10)
    assert not (tmp_path / "w3").exists()
    assert time.monotonic() - start < 60


def test_sources_that_are_not_submissions_are_a_clear_error(tmp_path):
    text = tmp_path / "grades.txt"
    text.write_text("not a zip")
    with pytest.raises(intake.IntakeError, match="not a zip archive, a folder or a notebook"):
        pipeline.collect_submissions(text, LAB, tmp_path / "w")
    truncated = tmp_path / "class.zip"
    with zipfile.ZipFile(truncated, "w") as zf:
        zf.writestr("alice.ipynb", NB)
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(intake.IntakeError):
        pipeline.collect_submissions(truncated, LAB, tmp_path / "w")
    with pytest.raises(intake.IntakeError, match="no submissions at"):
        pipeline.collect_submissions(tmp_path / "missing", LAB, tmp_path / "w")
    one = tmp_path / "dave_demo_lab.ipynb"  # a single notebook is one submission
    one.write_bytes(NB)
    assert [s.student for s in pipeline.collect_submissions(one, LAB, tmp_path / "w")] == ["dave"]


def test_ids_never_collide_and_renamed_ones_are_flagged(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("bob.ipynb", "bob_2.ipynb", f"bob_{LAB}.ipynb", "Bob.ipynb", "alice.ipynb"):
        (flat / name).write_bytes(NB + name.encode())
    subs = pipeline.collect_submissions(flat, LAB, tmp_path / "w")
    got = by_id(subs)
    assert len(subs) == 5 and len({s.student.lower() for s in subs}) == 5
    assert len({s.path for s in subs}) == 5
    assert got["bob"].path.name == "bob.ipynb" and got["bob_2"].path.name == "bob_2.ipynb"  # exact names keep theirs
    renamed = [s for s in subs if s.path.name in (f"bob_{LAB}.ipynb", "Bob.ipynb")]
    assert {s.student for s in renamed} == {"bob_3", "Bob_4"} or {s.student for s in renamed} == {"bob_4", "Bob_3"}
    assert all(s.review and "check which is the student's" in s.notes[0] for s in renamed)
    assert got["bob"].review and not got["bob_2"].review and not got["alice"].review
    # the same in a zip: every notebook is written under its own id, none overwrites another
    archive = tmp_path / "class.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("bob.ipynb", "bob_2.ipynb", f"bob_{LAB}.ipynb", f"x/bob_{LAB}.ipynb"):
            zf.writestr(name, NB + name.encode())
    subs = pipeline.collect_submissions(archive, LAB, tmp_path / "wz")
    contents = {s.path.read_bytes() for s in subs}
    assert len(subs) == 4 and len(contents) == 4 and len({s.student for s in subs}) == 4
    assert sum(s.review for s in subs) == 3  # bob and the two renamed


def test_lms_names_are_kept(tmp_path):
    archive = tmp_path / "moodle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("John Smith_12345_assignsubmission_file_/Untitled.ipynb", NB)
        zf.writestr("Jane Doe_67890_assignsubmission_file_/demo_lab.ipynb", NB)
        zf.writestr("Ann Lee_11111_assignsubmission_file_/bob_demo_lab.ipynb", NB)  # the folder wins over the file
        zf.writestr("Max Mo_22222_assignsubmission_file_/report.pdf", b"%PDF")
        zf.writestr("carol/Untitled.ipynb", NB)  # a generic file name in a folder: the folder's name
        zf.writestr("dave/demo_lab.ipynb", NB)
    got = by_id(pipeline.collect_submissions(archive, LAB, tmp_path / "w"))
    assert set(got) == {"John_Smith_12345", "Jane_Doe_67890", "Ann_Lee_11111", "Max_Mo_22222", "carol", "dave"}
    assert valid(got["John_Smith_12345"]) and valid(got["Ann_Lee_11111"])
    assert not valid(got["Max_Mo_22222"]) and "no notebook was submitted" in got["Max_Mo_22222"].notes[0]
    canvas = tmp_path / "canvas"
    canvas.mkdir()
    (canvas / "smithjohn_12345_678901_lab02.ipynb").write_bytes(NB)
    (canvas / "doejane_LATE_67890_678999_demo_lab-1.ipynb").write_bytes(NB)
    assert sorted(by_id(pipeline.collect_submissions(canvas, LAB, tmp_path / "w2"))) == ["doejane_67890", "smithjohn_12345"]
    f = pipeline.student_id_from_filename
    assert f("smithjohn_12345_678901_lab02.ipynb", "lab02") == "smithjohn_12345"  # stable over resubmissions
    assert f("smithjohn_12345_999999_lab02.ipynb", "lab02") == "smithjohn_12345"
    assert f("John Smith_12345_assignsubmission_file_lab02.ipynb", "lab02") == "John_Smith_12345"


def test_links_and_fifos_in_a_folder_are_never_opened(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "alice.ipynb").write_bytes(NB)
    os.mkfifo(flat / "fifo.ipynb")
    secret = tmp_path / "gradebook.db"
    secret.write_text("secret")
    (flat / "link.ipynb").symlink_to(secret)
    got = by_id(pipeline.collect_submissions(flat, LAB, tmp_path / "w"))
    assert valid(got["alice"])
    assert not valid(got["fifo"]) and "not a regular file" in got["fifo"].notes[0]
    assert not valid(got["link"]) and "symbolic link" in got["link"].notes[0]
    from optcourse.autograde.pipeline import LabInfo, precheck

    lab = LabInfo(LAB, f"{LAB}.ipynb", {}, set(), [], tmp_path)
    assert precheck(got["link"], lab)[0] == "no notebook was submitted"  # the grader never reads the link's target


@pytest.mark.parametrize("case", ["unknown_lab", "missing", "empty_folder", "not_a_zip", "empty_zip"])
def test_a_bad_intake_answers_at_once_and_leaves_nothing(tmp_path, case):
    """Checked before the lab's template is built (seconds): the reason, the list of labs, no output folder."""
    import time
    import zipfile

    from optcourse.autograde.pipeline import grade_batch

    lab, source = "lab04_benchmarking", tmp_path / "subs"
    if case == "unknown_lab":
        lab = "nosuchlab"
        source.mkdir()
    elif case == "empty_folder":
        (source / "notes").mkdir(parents=True)
        (source / "notes" / "readme.txt").write_text("no notebook here")
    elif case == "not_a_zip":
        source = tmp_path / "class.zip"
        source.write_text("not a zip")
    elif case == "empty_zip":
        source = tmp_path / "class.zip"
        with zipfile.ZipFile(source, "w") as z:
            z.writestr("readme.txt", "no notebook here")
    why = {"unknown_lab": "unknown lab 'nosuchlab': the labs in .* are lab01_tensorrt_int8, lab02_quantization",
           "missing": "no submissions at .*no such file or folder", "empty_folder": "no notebook in .*nothing to grade",
           "not_a_zip": "not a zip archive, a folder or a notebook", "empty_zip": "no notebook in .*nothing to grade"}
    start = time.monotonic()
    with pytest.raises(ValueError, match=why[case]):
        grade_batch(lab, source, tmp_path / "out", progress=False)
    assert time.monotonic() - start < 2, "a bad intake must answer before any grading work"
    assert not (tmp_path / "out").exists()
