"""What students receive (make student-dist) holds no answer, and is enough to work the course.

The distribution is built once for the module into a temporary folder. The leak scan looks at the zip
(what is published) and must also fail when a solution line, a hidden-test line or a quiz answer is
planted in it.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile

import nbformat
import pytest

from optcourse.course import student_dist as sd
from optcourse.core.paths import REPO_ROOT
from optcourse.course.release import SOLUTIONS_DIR, lab_names, nbgrader_config

LABS = lab_names()


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    folder, archive = sd.build(tmp_path_factory.mktemp("student-dist"))
    return folder, archive


@pytest.fixture(scope="module")
def known_secrets(dist):
    return sd.secrets(sd.shipped_library(dist[0]))


def shipped(folder: pathlib.Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_the_zip_holds_exactly_the_folder(dist):
    folder, archive = dist
    with zipfile.ZipFile(archive) as zf:
        names = {n for n in zf.namelist() if not n.endswith("/")}
    assert names == {f"{folder.name}/{rel}" for rel in shipped(folder)}


def test_no_solution_hidden_test_or_quiz_key_in_the_distribution(dist, known_secrets):
    leaks = sd.find_leaks(dist[1], known_secrets)
    assert not leaks, "\n".join(f"{l.file}: {l.secret.kind} from {l.secret.origin}: {l.secret.text[:100]}"
                                for l in leaks[:10])


def test_every_lab_and_the_quiz_bank_feed_the_scan(known_secrets):
    """A scan without secrets of some lab would pass whatever the distribution holds."""
    origins = {s.origin.split("#")[0] for s in known_secrets}
    kinds = {(s.kind, s.origin.split("#")[0]) for s in known_secrets}
    for lab in LABS:
        source = f"solutions/{lab}/{lab}.ipynb"
        assert ("solution", source) in kinds and ("hidden test", source) in kinds, source
    assert any(o.startswith("quiz/bank/") for o in origins)


def planted_copy(folder: pathlib.Path, tmp_path: pathlib.Path, rel: str, text: str) -> pathlib.Path:
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    target = copy / rel
    if target.suffix == ".ipynb":  # as a student would see it: a code cell of the notebook
        nb = nbformat.read(target, as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell("def helper(x):\n    " + text))
        nbformat.write(nb, target)
    else:
        target.write_text(target.read_text() + "\n    " + text + "\n")
    return copy


def first_secret(known, kind: str, origin_prefix: str) -> sd.Secret:
    return next(s for s in known if s.kind == kind and s.origin.startswith(origin_prefix))


@pytest.mark.parametrize("kind, origin, rel", [
    ("solution", f"solutions/{LABS[0]}", f"labs/{LABS[0]}/{LABS[0]}.ipynb"),
    ("hidden test", f"solutions/{LABS[-1]}", "optcourse/measure/metrics.py"),
    ("quiz key", "quiz/bank", "lectures/01_optimization_overview.ipynb"),
])
def test_the_scan_finds_a_planted_line(dist, known_secrets, tmp_path, kind, origin, rel):
    secret = first_secret(known_secrets, kind, origin)
    copy = planted_copy(dist[0], tmp_path, rel, secret.text)
    leaks = sd.find_leaks(copy, known_secrets)
    assert [(l.file, l.secret) for l in leaks] == [(rel, secret)]


def test_a_planted_solution_line_in_its_original_indentation_is_found(dist, known_secrets, tmp_path):
    source = SOLUTIONS_DIR / LABS[1] / f"{LABS[1]}.ipynb"
    secret_lines, _ = sd.secret_and_public_lines(json.loads(source.read_text()))
    line = next(line for kind, line in secret_lines if kind == "solution"
                and sd.normalise(line) in {s.text for s in known_secrets})
    copy = planted_copy(dist[0], tmp_path, "README.md", "    " + line.replace(" ", "   "))
    assert [l.file for l in sd.find_leaks(copy, known_secrets)] == ["README.md"]


def test_instructor_material_stays_out(dist):
    files = shipped(dist[0])
    for prefix in ("solutions/", "results/", "quiz/bank/", "quiz/keys/", "quiz/samples/", "autograder/labs/",
                   "autograder/samples/", "autograder/thresholds/", "tests/", "scripts/", "build/"):
        assert not any(f.startswith(prefix) for f in files), prefix
    assert not any(pathlib.PurePath(f).name in ("notes.md", "mistakes.yaml", "gradebook.db") for f in files)
    assert not any("outputs" in pathlib.PurePath(f).parts or ".ipynb_checkpoints" in f for f in files)
    reachable = reachable_modules(dist[0])
    unreachable = [f for f in files if f.startswith("optcourse/") and f.endswith(".py")
                   and f[:-3].replace("/", ".") not in reachable]
    assert not unreachable, "library modules nothing of the student's imports"


def reachable_modules(folder: pathlib.Path) -> set[str]:
    notebooks = [p for pattern in sd.ENTRY_NOTEBOOKS for p in folder.glob(pattern)]
    files = sd.library_closure(notebooks, root=folder)
    return {str(p.relative_to(folder).with_suffix("")).replace("/", ".") for p in files}


def test_students_get_the_labs_lectures_and_set_up_files(dist):
    files = shipped(dist[0])
    for lab in LABS:
        assert {str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "labs" / lab).rglob("*") if p.is_file()
                and "outputs" not in p.parts and ".ipynb_checkpoints" not in p.parts} <= files, lab
    assert {str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "lectures").glob("*.ipynb")} <= files
    assert set(sd.STUDENT_FILES) | {"README.md", "jupyter-config/nbgrader_config.py"} <= files
    assert any(f.startswith("optcourse/assets/") for f in files)


def test_the_closure_follows_imports_and_skips_what_nothing_imports(tmp_path):
    pkg = tmp_path / "optcourse"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .used import f\n")
    (pkg / "sub" / "used.py").write_text("def f():\n    from optcourse import deep\n")
    (pkg / "deep.py").write_text("")
    (pkg / "instructor_only.py").write_text("")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("%matplotlib inline\nfrom optcourse.sub import f")])
    nbformat.write(nb, tmp_path / "lab.ipynb")
    files = sd.library_closure([tmp_path / "lab.ipynb"], modules=(), root=tmp_path)
    assert {str(p.relative_to(tmp_path)) for p in files} == {
        "optcourse/__init__.py", "optcourse/sub/__init__.py", "optcourse/sub/used.py", "optcourse/deep.py"}


def test_the_distribution_imports_what_students_run_from_its_own_copy(dist):
    """Every shipped module imports with only the distribution on the path: nothing the labs, lectures,
    quiz notebook or make validate need was left behind."""
    folder = dist[0]
    modules = sorted(m.removesuffix(".__init__") for m in reachable_modules(folder))
    code = ("import importlib, pathlib, sys\n"
            f"for name in {modules!r}:\n"
            "    module = importlib.import_module(name)\n"
            "    assert pathlib.Path(module.__file__).is_relative_to(pathlib.Path.cwd()), module.__file__\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(folder)}
    result = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_readme_gives_each_labs_points_from_the_solutions(dist):
    from optcourse.autograde import perf

    readme = (dist[0] / "README.md").read_text()
    assert sd.LABS_TABLE_MARK not in readme
    for lab in LABS:
        nb = json.loads((SOLUTIONS_DIR / lab / f"{lab}.ipynb").read_text())
        total = sum(c["metadata"]["nbgrader"].get("points", 0) for c in nb["cells"]
                    if c["metadata"].get("nbgrader", {}).get("grade") or c["metadata"].get("nbgrader", {}).get("task"))
        total += sum(c.points for c in perf.checks_for(lab))    # the grader's own measurements count too
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{lab}`"))
        assert f"| **{total:g}** |" in row, row
    for topic in ("make lab", "make validate LAB=", "hidden tests", "Submitting", "docker build --target student"):
        assert topic in readme, topic


def test_lab_grading_counts_points_by_kind():
    grading = sd.lab_grading(LABS[0])
    assert grading.points == grading.auto_points + grading.manual_points + grading.grader_points > 0
    assert sd.lab_grading("lab03_vllm_deployment").grader_points == 3
    assert 0 < grading.hidden_test_cells <= grading.test_cells


def test_the_student_image_builds_from_the_distribution_by_the_dockerfile_rules(dist):
    """The Dockerfile's rules (tests/test_environment_files.py) hold with the distribution as the build
    context; its student stage refuses a context that holds solutions/."""
    from tests.test_environment_files import dockerfile_problems, dockerignore_patterns, dockerignored

    folder = dist[0]
    patterns = dockerignore_patterns((folder / ".dockerignore").read_text())
    context = {f for f in shipped(folder) if not dockerignored(f, patterns)}
    dockerfile = (folder / "Dockerfile").read_text()
    assert not dockerfile_problems(dockerfile, context, (folder / "Makefile").read_text())
    student_stage = dockerfile.split(" AS student", 1)[1].split("\nFROM ", 1)[0]
    assert "[ -e solutions ]" in student_stage and "exit 1" in student_stage


def make_lab_command(folder: pathlib.Path, port: int) -> str:
    """What `make lab` runs in the distribution (make -n: printed, not run)."""
    result = subprocess.run(["make", "-n", "lab", "ENV_READY=1", f"PORT={port}"], cwd=folder, capture_output=True,
                            text=True, timeout=60, env=student_environment(folder))
    assert result.returncode == 0, result.stderr
    return result.stdout


def student_environment(folder: pathlib.Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JUPYTER_CONFIG_PATH")}
    return env | {"PYTHONPATH": str(folder), "PATH": os.path.dirname(sys.executable) + os.pathsep + env["PATH"]}


def test_validate_in_the_students_jupyterlab_reads_the_courses_nbgrader_config(dist):
    """nbgrader's Validate handler, with the config path `make lab` gives it, gets the course's cell
    timeout (not nbgrader's default 30 s)."""
    folder = dist[0]
    config_path = re.search(r"JUPYTER_CONFIG_PATH=(\S+)", make_lab_command(folder, 8888)).group(1)
    code = ("from nbgrader.server_extensions.validate_assignment.handlers import ValidateAssignmentHandler\n"
            "print(ValidateAssignmentHandler.load_config(None).Execute.timeout)")
    env = student_environment(folder) | {"JUPYTER_CONFIG_PATH": config_path,
                                         "JUPYTER_CONFIG_DIR": str(folder / ".cache" / "jupyter" / "config")}
    result = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    course_timeout = nbgrader_config().Execute.timeout
    assert course_timeout > 30 and result.stdout.split()[-1] == str(course_timeout)


@pytest.mark.slow
def test_make_lab_serves_the_course_root_without_instructor_extensions(dist):
    """`make lab` in the distribution: labs/ and lectures/ both reachable, formgrader and the assignment
    list off, only Validate's nbgrader extension on; as root it passes --allow-root (it would die otherwise)."""
    folder = dist[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert ("--allow-root" in make_lab_command(folder, port)) == (os.getuid() == 0)
    log = open(folder.parent / "make-lab.log", "wb")
    server = subprocess.Popen(["make", "lab", "ENV_READY=1", f"PORT={port}"], cwd=folder,
                              env=student_environment(folder), stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)

    def status(path: str) -> tuple[int, str]:
        token = re.search(rb"token=([0-9a-f]+)", (folder.parent / "make-lab.log").read_bytes()).group(1).decode()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}?token={token}", timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, ""

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if status("/api/status")[0] == 200:
                    break
            except (urllib.error.URLError, AttributeError, ConnectionError):
                pass
            assert server.poll() is None, (folder.parent / "make-lab.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "JupyterLab did not start in 120 s"
            time.sleep(1)
        assert status("/api/contents/labs")[0] == 200 and status("/api/contents/lectures")[0] == 200
        assert status("/formgrader")[0] == 404 and status("/assignments")[0] == 404
        page = status("/lab")[1]
        for plugin in ("formgrader", "create-assignment", "assignment-list", "course-list"):
            assert f'"@jupyter/nbgrader:{plugin}"' in page.split('"disabledExtensions"', 1)[1].split("]", 1)[0]
        server_log = (folder.parent / "make-lab.log").read_text()
        assert "validate_assignment | extension was successfully loaded" in server_log
        assert "formgrader | extension was successfully loaded" not in server_log
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


@pytest.mark.parametrize("line, lecture", sorted(sd.TAUGHT_IN_LECTURES.items()))
def test_each_line_taught_in_a_lecture_is_still_in_its_lecture_and_a_solution(line, lecture):
    """An exception to the scan that no longer applies is removed, not kept as a blind spot."""
    lecture_code = sd.normalise((REPO_ROOT / lecture).read_text().replace("\\n", "\n").replace('\\"', '"'))
    assert line in lecture_code, f"{line!r} left {lecture}: remove it from TAUGHT_IN_LECTURES"
    solution_lines = {sd.normalise(text) for path in SOLUTIONS_DIR.glob("*/*.ipynb")
                      for _, text in sd.secret_and_public_lines(json.loads(path.read_text()))[0]}
    assert line in solution_lines, f"{line!r} is no solution line any more: remove it from TAUGHT_IN_LECTURES"
