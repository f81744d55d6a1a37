"""labs/ is exactly what nbgrader generates from solutions/, and no solution or hidden test leaks."""
import filecmp
import json
import pathlib

import pytest

from optcourse.course.release import LABS_DIR, SOLUTIONS_DIR, generate, lab_names

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
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


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
    secret, public, inside = [], [], False
    for cell in source_nb["cells"]:
        for line in "".join(cell["source"]).splitlines():
            stripped = line.strip()
            if stripped.startswith("### BEGIN SOLUTION") or stripped.startswith("### BEGIN HIDDEN TESTS"):
                inside = True
            elif stripped.startswith("### END SOLUTION") or stripped.startswith("### END HIDDEN TESTS"):
                inside = False
            elif inside:
                if len(stripped) > 25 and not stripped.startswith("#"):
                    secret.append(stripped)
            else:
                public.append(line)
    return secret, "\n".join(public)


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
