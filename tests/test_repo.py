"""Repository hygiene: what a newcomer, CI and the design expect to find."""
import json
import re
import subprocess

import pytest

TOP_LEVEL = ["README.md", "environment.yml", "lectures", "labs", "solutions", "autograder", "quiz", "Dockerfile",
             "Makefile", "pyproject.toml", "optcourse", "tests", ".ci/run", "requirements/cpu.lock"]


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_top_level_exists(repo_root, name):
    assert (repo_root / name).exists()


def tracked_notebooks(repo_root):
    """The course's own notebooks; results/ holds executed copies (the GPU runner's record), outputs included."""
    out = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=repo_root, capture_output=True, text=True, check=True)
    return [repo_root / p for p in out.stdout.split() if not p.startswith("results/")]


def test_notebooks_are_committed_without_outputs(repo_root):
    offenders = []
    for path in tracked_notebooks(repo_root) or (repo_root).glob("**/*.ipynb"):
        nb = json.loads(path.read_text())
        if any(c.get("outputs") or c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code"):
            offenders.append(str(path.relative_to(repo_root)))
    assert not offenders, f"strip outputs from: {offenders}"


def test_every_notebook_has_a_parameters_cell(repo_root):
    paths = list((repo_root / "lectures").glob("*.ipynb")) + list((repo_root / "solutions").glob("*/*.ipynb"))
    for path in paths:
        nb = json.loads(path.read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
        src = "".join(tagged[0]["source"])
        for name in ("device", "smoke", "metrics_path", "output_dir"):
            assert re.search(rf"^{name}\s*=", src, re.M), f"{path.name}: parameter {name} missing"


def test_ci_calls_the_readme_test_command(repo_root):
    assert "make test" in (repo_root / ".ci/run").read_text()
    assert "make test" in (repo_root / "README.md").read_text()


def test_makefile_has_the_documented_targets(repo_root):
    makefile = (repo_root / "Makefile").read_text()
    for target in ("setup", "run", "test", "lab", "release", "lock"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert "127.0.0.1" in makefile


def test_make_help_lists_every_target_once(repo_root):
    makefile = (repo_root / "Makefile").read_text()
    phony = set(re.search(r"^\.PHONY:(.*)$", makefile, re.M).group(1).split())
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=repo_root, capture_output=True, text=True,
                         check=True).stdout
    listed = re.findall(r"^  ([a-z][a-z-]*) +\S", out, re.M)
    assert sorted(listed) == sorted(phony | {"setup"}), f"make help lists {listed}; targets: {sorted(phony)}"
