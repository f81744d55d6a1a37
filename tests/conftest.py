"""Shared fixtures, and the offline environment (HF_HUB_OFFLINE=1, caches in .cache) for every test."""
import pathlib

import pytest

from optcourse.core.paths import REPO_ROOT, apply_offline_environment

apply_offline_environment()  # explicit: importing optcourse changes no environment variable


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


class NotebookExecutions:
    """Executes each notebook once per test session (smoke parameters) and keeps the result.

    Several tests look at one notebook's execution (its outputs, its metrics, its thresholds); a
    notebook takes minutes, so it runs once and the tests share the run.
    """

    def __init__(self, out_dir: pathlib.Path):
        self.out_dir = out_dir
        self.runs = {}

    def __call__(self, path: pathlib.Path):
        from optcourse.course.runner import execute

        path = pathlib.Path(path).resolve()
        if path not in self.runs:
            self.runs[path] = execute(path, self.out_dir, profile=self.profile, smoke=True, cell_timeout=900)
        return self.runs[path]

    @property
    def profile(self) -> str:
        from optcourse.core.hardware import resolve_profile

        return resolve_profile("auto")


@pytest.fixture(scope="session")
def executed_notebook(tmp_path_factory):
    """``executed_notebook(path)`` -> optcourse.course.runner.NotebookRun (``.output`` is the executed notebook)."""
    return NotebookExecutions(tmp_path_factory.mktemp("notebook-runs"))


def _read_notebook_with_parameters(path):
    """Read ``path``, assert it is valid and has exactly one ``parameters`` cell; return ``(notebook,
    parameters cell source)``. (Committed without outputs: tests/test_repo.py checks every notebook once.)"""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path}: exactly one cell tagged 'parameters'"
    return nb, params[0].source


@pytest.fixture(scope="session")
def read_notebook_with_parameters():
    """``read_notebook_with_parameters(path)`` -> (notebook, parameters source)."""
    return _read_notebook_with_parameters
