"""End to end in a real headless browser: JupyterLab runs a lab's first cells, nbgrader's formgrader renders.

One JupyterLab server for the module, started the way ``make lab`` starts it (127.0.0.1, a token,
``--no-browser``) on a free port, on a temporary copy of the course (``labs/``, ``solutions/`` and
``autograder/nbgrader_config.py``: nothing tracked is touched), with the offline environment and its
own Jupyter config, data and runtime folders. Debian's chromium, driven by Playwright (Playwright's
own browser download is never used), opens lab01's notebook, runs the parameters and set-up cells
from the keyboard and waits for the set-up cell's ``profile: ...`` line; then it opens ``/formgrader``
(nbgrader's server extension) and waits for the course's assignments. Screenshots go to
``build/test-artifacts/browser/`` (their paths are printed; ``pytest -s`` shows them).

Chromium comes from ``make browser-deps`` (``apt-get install chromium``); CI runs it first. Without
chromium the test skips on a workstation and fails in CI (``CI`` set).
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from optcourse.core.paths import REPO_ROOT, offline_environment
from optcourse.course.release import lab_names

from tests.processes import group_alive

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LAB = "lab01_tensorrt_int8"           # first cells: parameters, then imports and set-up (about 5 s on 2 cores)
ARTIFACTS = REPO_ROOT / "build" / "test-artifacts" / "browser"
SERVER_START_TIMEOUT = 120            # s; JupyterLab takes 5-20 s on a busy 2-core machine
KERNEL_TIMEOUT_MS = 120_000           # kernel start and the set-up cell (imports torch, onnxruntime, ...)
PAGE_TIMEOUT_MS = 90_000
INSTALL_HINT = ("Debian's chromium is needed for the browser test: run `make browser-deps` "
                "(as root: apt-get update && apt-get install -y --no-install-recommends chromium), "
                "or point CHROMIUM to a Chromium/Chrome executable")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_chromium() -> str | None:
    """$CHROMIUM when set, else Debian's ``chromium`` on PATH."""
    if os.environ.get("CHROMIUM"):
        candidates = [os.environ["CHROMIUM"]]
    else:
        candidates = [shutil.which("chromium"), shutil.which("chromium-browser")]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """A JupyterLab server in its own process group; ``stop()`` ends its kernels, then the group."""

    def __init__(self, root: pathlib.Path, home: pathlib.Path):
        self.root, self.home = root, home
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "jupyterlab.log"
        self.process: subprocess.Popen | None = None

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(offline_environment())           # the Makefile's exports: offline hub, caches in .cache
        for name in ("config", "data", "runtime"):  # Jupyter's own folders: fresh, per test run
            env[f"JUPYTER_{name.upper()}_DIR"] = str(self.home / name)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        # as `make formgrader`: the login cookie on "/" (nbgrader's handlers would set it on the page's folder, and
        # formgrader's /formgrader/api calls from a deep link would go unauthenticated: "Loading, please wait...")
        env["JUPYTER_CONFIG_PATH"] = str(self.root / "autograder" / "jupyter-config")
        env.pop("JUPYTER_TOKEN", None)
        return env

    def write_user_settings(self) -> None:
        # no "fetch Jupyter news?" toast over the notebook (and no attempt to reach jupyter.org)
        settings = self.home / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True, exist_ok=True)
        (settings / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))

    def start(self, attempts: int = 3) -> None:
        """Start the server and wait for /api/status; a new port when the free one was taken meanwhile."""
        self.write_user_settings()
        for attempt in range(attempts):
            try:
                return self._start()
            except PortTaken:
                self.stop()
                if attempt == attempts - 1:
                    raise RuntimeError(f"JupyterLab found no free port in {attempts} tries:\n{self.log_tail()}")
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"

    def _start(self) -> None:
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
               "--ip=127.0.0.1", f"--port={self.port}", "--ServerApp.port_retries=0",
               f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={self.root}"]
        log = open(self.log_path, "wb")
        # cwd: the course's autograder/ folder, where instructors run nbgrader; the formgrader reads
        # nbgrader_config.py from the server's working directory.
        self.process = subprocess.Popen(cmd, cwd=self.root / "autograder", env=self.environment(),
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        log.close()
        deadline = time.time() + SERVER_START_TIMEOUT
        while time.time() < deadline:
            if self.process.poll() is not None:
                if "already in use" in self.log_tail():
                    raise PortTaken(self.port)
                raise RuntimeError(f"JupyterLab exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                status = self.api("/api/status")
                if "started" in status:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer /api/status in {SERVER_START_TIMEOUT} s:\n{self.log_tail()}")

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(self.url + path, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            body = reply.read()
        return json.loads(body) if body else None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:  # kernels run in process groups of their own: shut them down through the server
                for kernel in self.api("/api/kernels"):
                    self.api(f"/api/kernels/{kernel['id']}", method="DELETE")
            except (OSError, ValueError):
                pass
        pgid = self.process.pid  # start_new_session: the server leads its own process group
        try:
            os.killpg(pgid, signal.SIGTERM)  # the server shuts its kernels down on SIGTERM too
            self.process.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            pass
        deadline = time.time() + 10
        while group_alive(pgid) and time.time() < deadline:  # whatever is left of the group
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.2)
            self.process.poll()  # reap the leader: a zombie still counts as a member
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


class PortTaken(Exception):
    pass


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> pathlib.Path:
    """A throw-away copy of the course: labs/ (what students open), solutions/ (nbgrader's source),
    autograder/nbgrader_config.py (whose CourseDirectory.root is the folder above it: this copy)."""
    root = tmp_path_factory.mktemp("browser-course")
    ignore = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "outputs")
    shutil.copytree(REPO_ROOT / "labs", root / "labs", ignore=ignore)
    shutil.copytree(REPO_ROOT / "solutions", root / "solutions", ignore=ignore)
    (root / "autograder").mkdir()
    shutil.copy(REPO_ROOT / "autograder" / "nbgrader_config.py", root / "autograder" / "nbgrader_config.py")
    shutil.copytree(REPO_ROOT / "autograder" / "jupyter-config", root / "autograder" / "jupyter-config")
    return root


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser's executable; without one the test skips on a workstation and fails in CI."""
    path = find_chromium()
    if path:
        return path
    where = f"CHROMIUM={os.environ['CHROMIUM']} is not an executable" if os.environ.get("CHROMIUM") \
        else "chromium is not on PATH"
    if in_ci():
        pytest.fail(f"{where} (CI={os.environ.get('CI')}). {INSTALL_HINT}", pytrace=False)
    pytest.skip(f"{where}. {INSTALL_HINT}")


@pytest.fixture(scope="module")
def jupyterlab(chromium, course, tmp_path_factory):  # chromium first: no server start without a browser
    server = JupyterLab(course, tmp_path_factory.mktemp("jupyter-home"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        assert server.process is None or not group_alive(server.process.pid), "JupyterLab outlived stop()"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if server.log_path.exists():
            shutil.copy(server.log_path, ARTIFACTS / "jupyterlab.log")


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=PAGE_TIMEOUT_MS)
    # Playwright drives Debian's chromium over CDP; --no-sandbox because CI runs as root
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, request):
    """A fresh page; when the test fails, its screenshot is kept as <test>-failure.png."""
    failed_before = request.session.testsfailed
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield page
    finally:
        if request.session.testsfailed > failed_before:  # the call phase is reported before teardown
            shot(page, f"{request.node.name}-failure.png")
        context.close()


def shot(page, name: str) -> pathlib.Path | None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    try:
        page.screenshot(path=str(path), full_page=False)
    except Exception as exc:  # a screenshot must not hide the real failure
        print(f"screenshot {path} failed: {exc}")
        return None
    print(f"screenshot: {path}")
    return path


def test_lab_notebook_runs_its_first_cells(jupyterlab, page):
    from playwright.sync_api import expect

    page.goto(f"{jupyterlab.url}/lab/tree/labs/{LAB}/{LAB}.ipynb?token={jupyterlab.token}",
              wait_until="domcontentloaded")
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
    expect(notebook).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    # The status bar's kernel item ("Python 3 (ipykernel) | Idle") says Idle only once the kernel
    # has started and its websocket is connected. (The toolbar's execution indicator is no use here:
    # it reads data-status="idle" before any kernel exists.)
    kernel_status = page.get_by_title(f"Change kernel for {LAB}.ipynb")
    expect(kernel_status).to_have_text(re.compile(r"\| Idle$"), timeout=KERNEL_TIMEOUT_MS)

    cells = notebook.locator(".jp-Cell")
    params, setup = cells.nth(1), cells.nth(2)
    expect(params).to_contain_text("smoke = True")
    expect(setup).to_contain_text("resolve_profile(device)")
    # click into the parameters cell, leave edit mode, then Shift+Enter twice: parameters, set-up
    params.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Escape")
    page.keyboard.press("Shift+Enter")
    expect(params.locator(".jp-InputPrompt")).to_contain_text("[1]", timeout=KERNEL_TIMEOUT_MS)
    page.keyboard.press("Shift+Enter")

    output = setup.locator(".jp-OutputArea-output")
    expect(output.first).to_contain_text(re.compile(r"profile: (cpu|cuda)"), timeout=KERNEL_TIMEOUT_MS)
    expect(setup.locator(".jp-InputPrompt")).to_contain_text("[2]", timeout=KERNEL_TIMEOUT_MS)
    expect(kernel_status).to_have_text(re.compile(r"\| Idle$"), timeout=KERNEL_TIMEOUT_MS)
    errors = notebook.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')
    assert errors.count() == 0, errors.first.inner_text()
    text = output.all_inner_texts()
    assert any("TensorRT" in t for t in text), f"the set-up cell should say which engine path it takes: {text}"
    setup.scroll_into_view_if_needed()
    assert shot(page, f"{LAB}-first-cells.png"), "no screenshot"


def test_formgrader_lists_the_course_assignments(jupyterlab, page):
    from playwright.sync_api import expect

    page.goto(f"{jupyterlab.url}/formgrader?token={jupyterlab.token}", wait_until="domcontentloaded")
    expect(page).to_have_url(re.compile(r"/formgrader/manage_assignments/?$"))
    expect(page.get_by_role("heading", name="Manage Assignments", level=1)).to_be_visible()
    table = page.locator("#main-table")
    for lab in lab_names():  # the source/ folders of the course: solutions/<lab>
        expect(table.get_by_text(lab, exact=True)).to_be_visible()
    assert shot(page, "formgrader-manage-assignments.png"), "no screenshot"


def test_the_run_report_reads_at_a_glance(page, tmp_path):
    """The runner's report.html as a course lead opens it: every plot drawn (the margins and the notebook's own),
    PASS green, FAIL red, SKIP grey with its reason, values rounded with their units, a link to the executed
    notebook; a screenshot of it is kept with the browser test's artifacts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from optcourse.course import runner

    run = runner.NotebookRun("lab", REPO_ROOT / "solutions" / "lab" / "lab.ipynb", tmp_path / "notebooks" / "lab.ipynb",
                             tmp_path / "metrics" / "lab.json", tmp_path / "artifacts" / "lab", 12.3, True, "")
    run.artifacts.mkdir(parents=True)
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([1, 3, 2])
    fig.savefig(run.artifacts / "latency.png")
    plt.close(fig)
    rows = [{"item": "lab", "metric": "executes", "measured": 12.3, "threshold": "no error", "passed": True},
            {"item": "lab", "metric": "speedup", "measured": 2.34567, "unit": "x", "threshold": ">= 1.5", "passed": True},
            {"item": "lab", "metric": "error", "measured": -2.4e-6, "unit": "rel", "threshold": "<= 0.01", "passed": True},
            {"item": "lab", "metric": "accuracy", "measured": 0.41234, "unit": "fraction", "threshold": ">= 0.9",
             "passed": False},
            {"item": "lab", "metric": "trt_speedup", "measured": None, "threshold": ">= 2", "passed": True,
             "skipped": True, "note": "not applicable: tensorrt is not installed"}]
    runner.write_report(rows, [run], tmp_path, "cpu", smoke=True)
    page.goto((tmp_path / "report.html").as_uri())
    drawn = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
    assert drawn == [True, True], drawn
    colours = page.evaluate("Object.fromEntries(Array.from(document.querySelectorAll(\"table[data-name='thresholds'] "
                            "tr[class]\")).map(r => [r.cells[1].textContent, getComputedStyle(r).backgroundColor]))")
    assert colours["trt_speedup"] == "rgb(238, 238, 238)" and colours["accuracy"] == "rgb(251, 224, 224)", colours
    assert colours["speedup"] == "rgb(234, 247, 234)", colours
    text = page.inner_text("body")
    assert "2.346 x" in text and "0.4123 fraction" in text and "not applicable: tensorrt is not installed" in text
    assert "smoke (CI-sized) parameters" in text and "2.34567" not in text
    shot(page, "run-report.png")
    assert (ARTIFACTS / "run-report.png").stat().st_size > 20_000   # a rendered page, not a blank one


MANUAL_LAB = "manual_lab"


def manual_lab_source() -> "nbformat.NotebookNode":
    """A two-cell lab: one autograded test, one written answer an instructor grades by hand (as lab 01's)."""
    import nbformat

    def meta(grade_id, grade, solution, locked, points=None):
        m = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution}
        return {"nbgrader": m | ({"points": points} if points is not None else {})}

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Manual lab\nOne function and one written answer."),
        nbformat.v4.new_code_cell("def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
                                  metadata=meta("task1_double", False, True, False)),
        nbformat.v4.new_code_cell("assert double(2) == 4, 'double(2) is 4'", metadata=meta("test_task1", True, False, True, 1)),
        nbformat.v4.new_markdown_cell("Why does batching raise decode throughput? (2 points, graded by hand)",
                                      metadata=meta("question", False, False, True)),
        nbformat.v4.new_markdown_cell("Batching reads the weights once for many sequences.",
                                      metadata=meta("written_answer", True, True, False, 2)),
    ]
    return nb


def test_formgrader_opens_an_autograded_submission_and_saves_a_manual_grade(course, jupyterlab, page, tmp_path):
    """The instructor's loop in nbgrader's own UI: the class autograder grades a submission into the course's gradebook
    and autograded/ folder (what `make autograde` does), formgrader lists it, opens it with its automatic score, and
    a manual grade typed for the written answer is saved in the gradebook."""
    import nbformat
    from nbgrader.api import Gradebook
    from playwright.sync_api import expect

    from optcourse.autograde.pipeline import grade_batch
    from optcourse.autograde.sandbox import sandbox_available
    from optcourse.course.release import nbgrader_generate

    if not sandbox_available()[0]:
        pytest.skip("the class autograder's sandbox is unavailable here")
    (course / "solutions" / MANUAL_LAB).mkdir(exist_ok=True)
    nbformat.write(manual_lab_source(), course / "solutions" / MANUAL_LAB / f"{MANUAL_LAB}.ipynb")
    nbgrader_generate(MANUAL_LAB, root=course, source=str(course / "solutions"), release=tmp_path / "release",
                      db_url=f"sqlite:///{tmp_path}/release.db")
    student = nbformat.read(tmp_path / "release" / MANUAL_LAB / f"{MANUAL_LAB}.ipynb", as_version=4)
    for cell in student.cells:   # the student's answers
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid == "task1_double":
            cell.source = "def double(x):\n    return x + x"
        elif gid == "written_answer":
            cell.source = "One weight read serves every sequence of the batch."
    (tmp_path / "submitted" / "alice" / MANUAL_LAB).mkdir(parents=True)
    nbformat.write(student, tmp_path / "submitted" / "alice" / MANUAL_LAB / f"{MANUAL_LAB}.ipynb")
    db = f"sqlite:///{course}/autograder/gradebook.db"      # the course's gradebook, as make autograde writes it
    report = grade_batch(MANUAL_LAB, tmp_path / "submitted", tmp_path / "out", source_dir=course / "solutions",
                         db_url=db, autograded_dir=course / "autograder" / "autograded", workers=1, progress=False)
    assert report.by_student()["alice"].score == 1, report.table
    assert (course / "autograder" / "autograded" / "alice" / MANUAL_LAB / f"{MANUAL_LAB}.ipynb").is_file()
    with Gradebook(db) as gb:
        submission_id = gb.find_submission_notebook(MANUAL_LAB, MANUAL_LAB, "alice").id

    page.goto(f"{jupyterlab.url}/formgrader/gradebook/{MANUAL_LAB}/{MANUAL_LAB}?token={jupyterlab.token}",
              wait_until="domcontentloaded")
    row = page.get_by_role("row").filter(has_text="Submission #1")              # formgrader lists the submission
    expect(row).to_contain_text("1 / 3")                                        # 1 automatic point of 3 so far
    page.goto(f"{jupyterlab.url}/formgrader/submissions/{submission_id}/?token={jupyterlab.token}",
              wait_until="domcontentloaded")
    expect(page.get_by_text("One weight read serves every sequence of the batch.")).to_be_visible()
    score = page.locator("input#written_answer")
    expect(score).to_be_visible()
    score.fill("1.5")
    score.press("Tab")                       # formgrader saves a score when the field changes
    expect(page.locator("input#written_answer + .score-saved, .score-saved").first).to_be_attached()
    deadline = time.time() + 30
    while True:
        with Gradebook(db) as gb:
            grade = gb.find_grade("written_answer", MANUAL_LAB, MANUAL_LAB, "alice")
            manual, auto = grade.manual_score, gb.find_grade("test_task1", MANUAL_LAB, MANUAL_LAB, "alice").auto_score
        if manual is not None or time.time() > deadline:
            break
        time.sleep(0.5)
    shot(page, "formgrader-manual-grade.png")
    assert manual == 1.5 and auto == 1, (manual, auto)
    # grading the class again (a late submission, a fixed test) keeps the instructor's grade
    grade_batch(MANUAL_LAB, tmp_path / "submitted", tmp_path / "out", source_dir=course / "solutions",
                db_url=db, autograded_dir=course / "autograder" / "autograded", workers=1, progress=False)
    with Gradebook(db) as gb:
        grade = gb.find_grade("written_answer", MANUAL_LAB, MANUAL_LAB, "alice")
        assert (grade.manual_score, grade.needs_manual_grade) == (1.5, False)
        assert gb.find_submission(MANUAL_LAB, "alice").score == 2.5
