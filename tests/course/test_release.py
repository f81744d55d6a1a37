"""labs/ is exactly what nbgrader generates from solutions/, and no solution or hidden test leaks."""
import filecmp
import json
import pathlib
import shutil

import pytest

from optcourse.course.release import LABS_DIR, SOLUTIONS_DIR, generate, ignored, install, lab_names
from optcourse.course.student_dist import secret_and_public_lines

LABS = lab_names()


def test_every_solution_has_a_released_lab_and_back():
    released = sorted(p.name for p in LABS_DIR.iterdir() if p.is_dir()) if LABS_DIR.exists() else []
    assert released == LABS, "run `make release` after changing solutions/"


@pytest.fixture(scope="module")
def fresh_release(tmp_path_factory):
    dest = tmp_path_factory.mktemp("release")
    generate(LABS, dest=dest)
    return dest


def relative_files(root: pathlib.Path) -> set[str]:
    """The files of a lab folder that a release accounts for: not what nbgrader never releases (the
    notebook's outputs/, JupyterLab's .ipynb_checkpoints, caches)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not ignored(p.relative_to(root))}


def test_the_drift_check_ignores_outputs_and_checkpoints(tmp_path):
    for rel in ("lab.ipynb", "outputs/model.onnx", "outputs/report.json", ".ipynb_checkpoints/lab-checkpoint.ipynb",
                "__pycache__/helpers.cpython-311.pyc", "data.tsv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    assert relative_files(tmp_path) == {"lab.ipynb", "data.tsv"}


@pytest.mark.parametrize("lab", LABS)
def test_labs_do_not_drift_from_solutions(lab, fresh_release):
    expected, actual = fresh_release / lab, LABS_DIR / lab
    assert relative_files(expected) == relative_files(actual), "files differ: run `make release`"
    for rel in relative_files(expected):
        a, b = expected / rel, actual / rel
        if rel.endswith(".ipynb"):
            assert json.loads(a.read_text()) == json.loads(b.read_text()), f"{rel} drifted: run `make release`"
        else:
            assert filecmp.cmp(a, b, shallow=False), f"{rel} drifted: run `make release`"


def split_secret_and_public(source_nb: dict) -> tuple[list[str], str]:
    """(non-trivial lines inside BEGIN/END SOLUTION and HIDDEN TESTS blocks, all text outside them)."""
    secret, public = secret_and_public_lines(source_nb)
    return [line for _, line in secret if len(line) > 25 and not line.startswith("#")], "\n".join(public)


@pytest.mark.parametrize("lab", LABS)
def test_no_solution_or_hidden_test_reaches_students(lab):
    source = json.loads((SOLUTIONS_DIR / lab / f"{lab}.ipynb").read_text())
    released = [json.loads(p.read_text()) if p.suffix == ".ipynb" else None for p in (LABS_DIR / lab).rglob("*")
                if p.is_file()]
    released_text = "\n".join("".join(c["source"]) for nb in released if nb for c in nb["cells"])
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in released_text
    secret_lines, public_text = split_secret_and_public(source)
    assert secret_lines, "a lab without solution or hidden-test blocks grades nothing"
    # a line may legitimately appear outside the blocks too (given code, a visible test): not a leak
    leaked = [line for line in secret_lines if line in released_text and line not in public_text]
    assert not leaked, f"solution/hidden lines found in labs/{lab}: {leaked[:3]}"


def answered(notebook: pathlib.Path, answer: str) -> None:
    """Write ``answer`` into the notebook's first solution cell, as a student would."""
    nb = json.loads(notebook.read_text())
    cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("solution"))
    cell["source"] = answer
    notebook.write_text(json.dumps(nb))


def test_a_release_over_a_working_copy_keeps_the_students_answers(fresh_release, tmp_path):
    lab = LABS[0]
    working = tmp_path / lab
    shutil.copytree(fresh_release / lab, working)
    notebook = working / f"{lab}.ipynb"
    answered(notebook, "def my_answer():\n    return 42\n")
    (working / "outputs").mkdir()
    (working / "outputs" / "engine.onnx").write_text("built by the student")
    (working / "scratch.py").write_text("# the student's own file")

    kept = install(fresh_release / lab, working)

    assert json.loads(notebook.read_text()) == json.loads((fresh_release / lab / f"{lab}.ipynb").read_text())
    assert len(kept) == 1 and kept[0].parent == working and "return 42" in kept[0].read_text()
    assert (working / "outputs" / "engine.onnx").read_text() == "built by the student"
    assert (working / "scratch.py").exists()


def test_a_release_over_an_untouched_copy_keeps_nothing_aside(fresh_release, tmp_path):
    lab = LABS[0]
    working = tmp_path / lab
    shutil.copytree(fresh_release / lab, working)
    notebook = working / f"{lab}.ipynb"
    nb = json.loads(notebook.read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["execution_count"], code["outputs"] = 1, [{"output_type": "stream", "name": "stdout", "text": "ran\n"}]
    notebook.write_text(json.dumps(nb))  # run, not edited: outputs are no answers
    assert install(fresh_release / lab, working) == []
    assert json.loads(notebook.read_text()) == json.loads((fresh_release / lab / f"{lab}.ipynb").read_text())


def test_a_committed_release_whose_instructor_cells_change_keeps_nothing_aside(fresh_release, tmp_path):
    """In the instructor's repository labs/ is committed: a new release that rewrites a given cell replaces it
    (what git holds is no one's unsaved work), while the same edit in an uncommitted copy is kept aside."""
    import subprocess

    lab = LABS[0]
    working = tmp_path / lab
    shutil.copytree(fresh_release / lab, working)
    notebook = working / f"{lab}.ipynb"
    nb = json.loads(notebook.read_text())
    given = next(c for c in nb["cells"] if c["cell_type"] == "markdown" and "nbgrader" not in c.get("metadata", {}))
    given["source"] = "text of the previous release"
    notebook.write_text(json.dumps(nb))
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    assert install(fresh_release / lab, working) == []
    given["source"] = "a student's edit, not committed"
    notebook.write_text(json.dumps(nb))
    assert len(install(fresh_release / lab, working)) == 1


def test_nbgrader_asks_alembic_for_its_schema_revision_once_per_process(tmp_path, monkeypatch):
    """Each new gradebook needs the revision; nbgrader starts an `alembic heads` process for every one."""
    import subprocess

    import nbgrader.api

    from optcourse.course import release

    release._ask_alembic_once()
    nbgrader.api.get_alembic_version.cache_clear()
    calls = []
    real = subprocess.check_output
    monkeypatch.setattr(nbgrader.api.sp, "check_output", lambda *a, **k: calls.append(a) or real(*a, **k))
    for i in range(3):
        nbgrader.api.Gradebook(f"sqlite:///{tmp_path}/gradebook{i}.db").close()
    assert len(calls) == 1
    with nbgrader.api.Gradebook(f"sqlite:///{tmp_path}/gradebook0.db") as gb:   # stamped with alembic's answer
        assert gb.db.execute(nbgrader.api.text("SELECT version_num FROM alembic_version")).scalar() == \
            nbgrader.api.get_alembic_version()
