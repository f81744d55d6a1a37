"""`make validate` (optcourse.course.validate): a student's check before submitting, with the grader's rules."""
import shutil

import pytest

from optcourse.core.paths import AUTOGRADER_DIR
from optcourse.course.validate import main

SUBMISSIONS = AUTOGRADER_DIR / "samples" / "demo_lab" / "submissions"


@pytest.mark.notebooks
@pytest.mark.timeout(300)
def test_validate_lists_each_test_and_forgives_warnings(tmp_path, capsys):
    for name in ("warns_stderr", "blank"):
        shutil.copy(SUBMISSIONS / f"{name}.ipynb", tmp_path / f"{name}.ipynb")
    assert main([str(tmp_path / "warns_stderr.ipynb")]) == 0  # a warning in a test costs nothing, as in grading
    out = capsys.readouterr().out
    assert "pass  test_task1_add  (2 pt)" in out and "2/2 test cells pass" in out
    assert main([str(tmp_path / "blank.ipynb")]) == 1
    out = capsys.readouterr().out
    assert "FAIL  test_task1_add  (2 pt)  NotImplementedError" in out and "0/2 test cells pass" in out


def test_validate_says_what_is_wrong_with_its_input(tmp_path, capsys):
    assert main([str(tmp_path / "missing.ipynb")]) == 2
    assert "no notebook at" in capsys.readouterr().err
    (tmp_path / "junk.ipynb").write_text("{not json")
    assert main([str(tmp_path / "junk.ipynb")]) == 2
    assert "could not run" in capsys.readouterr().err
