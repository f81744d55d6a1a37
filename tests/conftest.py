"""Shared fixtures, and the offline environment (HF_HUB_OFFLINE=1, caches in .cache) for every test."""
import pathlib

import pytest

from optcourse.core.paths import REPO_ROOT, apply_offline_environment
from optcourse.course.runner import NotebookRun

apply_offline_environment()  # explicit: importing optcourse changes no environment variable


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


class NotebookExecutions:
    """Executes each notebook once per test session (smoke parameters) and keeps the result.

    Several tests look at one notebook's execution (its outputs, its metrics, its thresholds); a
    notebook takes minutes, so it runs once and the tests share the run. ``prefetch`` starts executions
    in a background lane (one process, one notebook at a time: a lecture times on one thread) while the
    session's other tests run on the other core; a test that needs a run waits for it there.
    """

    def __init__(self, out_dir: pathlib.Path):
        self.out_dir = out_dir
        self.runs = {}      # path -> NotebookRun, or the lane's Future of it
        self._lane = None

    def prefetch(self, paths) -> None:
        import concurrent.futures
        import multiprocessing

        from optcourse.course.runner import execute

        if self._lane is None:   # spawn: a fork of pytest would carry its threads and open files into the lane
            self._lane = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        for path in map(_resolved, paths):
            if path not in self.runs:
                self.runs[path] = self._lane.submit(execute, path, self.out_dir, self.profile, True, 900)

    def __call__(self, path: pathlib.Path):
        from optcourse.course.runner import execute

        path = _resolved(path)
        if path not in self.runs:
            self.runs[path] = execute(path, self.out_dir, profile=self.profile, smoke=True, cell_timeout=900)
        if not isinstance(self.runs[path], NotebookRun):
            self.runs[path] = self.runs[path].result()   # the lane's run (an exception there is raised here)
        return self.runs[path]

    def close(self) -> None:
        if self._lane is not None:   # a session stopped early: the queued runs are dropped
            self._lane.shutdown(wait=True, cancel_futures=True)

    @property
    def profile(self) -> str:
        from optcourse.core.hardware import resolve_profile

        return resolve_profile("auto")


def _resolved(path) -> pathlib.Path:
    return pathlib.Path(path).resolve()


@pytest.fixture(scope="session")
def executed_notebook(tmp_path_factory):
    """``executed_notebook(path)`` -> optcourse.course.runner.NotebookRun (``.output`` is the executed notebook)."""
    runs = NotebookExecutions(tmp_path_factory.mktemp("notebook-runs"))
    yield runs
    runs.close()


# ---- the session's order, for two cores: the lab contracts first, alone (each grades its lab in a pool of two
# sandboxes and measures performance on an idle machine); then the other tests on one core while the notebooks
# that tests execute run in the background lane on the other; the tests that read those runs last.
_LANE = pytest.StashKey[list]()


def _is_contract(item) -> bool:
    return item.path.name == "test_lab_contract.py"


def _notebooks_of(item) -> list[pathlib.Path]:
    """The notebooks ``item`` executes through ``executed_notebook``: its ``path``/``name`` parameter (a lecture)
    or its ``executes`` marks."""
    if "executed_notebook" not in getattr(item, "fixturenames", ()):
        return []
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "path" in params:
        return [pathlib.Path(params["path"])]
    if "name" in params:
        return [REPO_ROOT / "lectures" / f"{params['name']}.ipynb"]
    return [REPO_ROOT / m.args[0] for m in item.iter_markers("executes")]


def pytest_collection_modifyitems(config, items):
    executes = {id(item): _notebooks_of(item) for item in items}
    items.sort(key=lambda item: 0 if _is_contract(item) else 2 if executes[id(item)] else 1)   # stable
    config.stash[_LANE] = list(dict.fromkeys(p for item in items for p in executes[id(item)]))


@pytest.fixture(autouse=True)
def _notebook_lane(request):
    """Starts the background lane with the first test that is not a lab contract."""
    pending = request.config.stash.get(_LANE, [])
    if pending and not _is_contract(request.node):
        request.getfixturevalue("executed_notebook").prefetch(pending)
        pending.clear()


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
