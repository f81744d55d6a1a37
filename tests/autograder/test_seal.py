"""Graded work cannot be delegated to the library (``optcourse/autograde/seal.py``): the sealed sources, and a
sandboxed batch of the demo lab whose ``add`` names a library function as its reference."""
from __future__ import annotations

import shutil
import sys

import nbformat
import pytest

from optcourse.autograde import Limits, grade_batch, sandbox_available, seal
from optcourse.core.paths import AUTOGRADER_DIR, PACKAGE_DIR

sys.path.insert(0, str(AUTOGRADER_DIR / "samples"))
import make_samples  # noqa: E402

REFERENCE = "optcourse.measure.bench.geometric_mean"


def _load(source: str, filename: str) -> dict:
    namespace: dict = {}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


NOTEBOOK = "/tmp/ipykernel_4242/123456.py"  # where ipykernel compiles a cell
AGENT = _load("def serve(fn, *args):\n    return fn(*args)\n", seal._AGENT)["serve"]  # the grader's agent


@pytest.fixture()
def notebook(monkeypatch):
    """Define notebook code (compiled as a cell) in ``__main__``, as the kernel's namespace is."""
    import __main__

    def define(source: str, **names):
        ns = dict(names)  # the cell's globals: what it uses, then what it defines
        if source:
            exec(compile(source, NOTEBOOK, "exec"), ns)
        for key, value in ns.items():
            if not key.startswith("__"):
                monkeypatch.setattr(__main__, key, value, raising=False)
        return ns
    return define


@pytest.fixture(scope="module")
def bench():
    (path, source), = seal.sealed_files({"add": [REFERENCE]}).items()
    assert path == "measure/bench.py"
    return _load(source, str(PACKAGE_DIR / path))  # compiled under the library's file name, as the sandbox imports it


def test_an_answer_that_calls_its_reference_during_a_test_is_refused(bench, notebook):
    ns = notebook("def helper(values):\n    return geometric_mean(values)\n"
                  "def add(values):\n    return helper(values)\n"
                  "def other_task(values):\n    return geometric_mean(values)\n", geometric_mean=bench["geometric_mean"])
    with pytest.raises(seal.ReferenceNotAvailable, match=r"optcourse\.measure\.bench\.geometric_mean .*not available"):
        AGENT(ns["add"], [1.0, 4.0])  # through a helper of the answer's: refused too
    assert ns["add"]([1.0, 4.0]) == pytest.approx(2.0), "outside a test (the lab's given cells) it works"
    assert AGENT(ns["other_task"], [1.0, 4.0]) == pytest.approx(2.0), "another task's answer may use it"


@pytest.mark.parametrize("alias", ["itself", "partial"])
def test_an_answer_that_is_the_reference_is_refused(bench, notebook, alias):
    import functools

    answer = bench["geometric_mean"] if alias == "itself" else functools.partial(bench["geometric_mean"])
    notebook("", add=answer)
    with pytest.raises(seal.ReferenceNotAvailable):
        AGENT(answer, [1.0, 4.0])


def test_the_library_may_use_a_sealed_function_for_an_answer(bench, notebook):
    library = _load("def summary(values):\n    return geometric_mean(values)\n", str(PACKAGE_DIR / "measure" / "x.py"))
    library["geometric_mean"] = bench["geometric_mean"]
    ns = notebook("def add(values):\n    return summary(values)\n", summary=library["summary"])
    assert AGENT(ns["add"], [1.0, 4.0]) == pytest.approx(2.0)


def test_a_sealed_class_refuses_a_subclass_and_an_answer_that_builds_it(notebook):
    ns = _load(seal.sealed_files({"PagedAllocator": ["optcourse.techniques.kvcache.BlockAllocator"]}).popitem()[1],
               str(PACKAGE_DIR / "techniques" / "kvcache.py"))
    cls = ns["BlockAllocator"]
    sub = notebook("class PagedAllocator(Base):\n    pass\n", Base=cls)
    with pytest.raises(seal.ReferenceNotAvailable, match="BlockAllocator"):
        AGENT(sub["PagedAllocator"], 4, 2)
    wrapper = notebook("class PagedAllocator:\n    def __init__(self, n, b):\n        self.inner = Base(n, b)\n", Base=cls)
    with pytest.raises(seal.ReferenceNotAvailable):
        AGENT(wrapper["PagedAllocator"], 4, 2)
    assert wrapper["PagedAllocator"](4, 2).inner.num_blocks == 4  # outside a test it works
    assert ns["Request"].__name__ == "Request"


@pytest.mark.parametrize("bad, why", [("optcourse.measure.bench.no_such_function", "no top-level function"),
                                      ("numpy.mean", "only modules of the course library"),
                                      ("optcourse.measure.nosuchmodule.f", "not a module of the course library"),
                                      ("geometric_mean", "not a dotted name")])
def test_a_reference_the_library_does_not_define_is_an_error(bad, why):
    with pytest.raises(ValueError, match=why):
        seal.sealed_files({"answer": [bad]})


def test_every_lab_names_its_references_in_metadata_and_instructions():
    import re

    from optcourse.course.release import SOLUTIONS_DIR, lab_names

    for lab in lab_names():
        nb = nbformat.read(SOLUTIONS_DIR / lab / f"{lab}.ipynb", as_version=4)
        refs = seal.references_of(nb)
        assert refs, f"{lab}: names no library reference of its graded functions"
        assert seal.sealed_files(refs), f"{lab}: its references must be top-level names of the library"
        answers = {m for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("solution")
                   for m in re.findall(r"^(?:def|class) (\w+)", c.source, re.M)}
        assert set(refs) <= answers, f"{lab}: references for functions no answer cell defines: {set(refs) - answers}"
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        missing = [f"{a}: {r}" for a, rs in refs.items() for r in rs if f"`{a}`" not in text or f"`{r}`" not in text]
        assert not missing, f"{lab}: the instructions must name each answer's sealed references; missing {missing}"
        assert "not available while grading" in text and "ReferenceNotAvailable" in text, \
            f"{lab}: the instructions must say what happens when an answer calls its reference"


# ------------------------------------------------------------------------------------ through the sandbox
ok, why = sandbox_available()
LIMITS = Limits(cell_timeout_s=10, notebook_timeout_s=120, memory_bytes=2 << 30, work_bytes=128 << 20, nproc=128)
ADD = "def add(a, b):\n    return a + b"
EVADE = r'''
import importlib, importlib.machinery, importlib.util
from optcourse.measure import bench

def _works(fn):
    try:
        return abs(fn([1.0, 4.0]) - 2.0) < 1e-9
    except Exception:
        return False

def _evasions():
    found = []
    if _works(importlib.reload(bench).geometric_mean):
        found.append("reload")
    ns = {}
    exec(open(bench.__file__).read(), ns)
    if _works(ns["geometric_mean"]):
        found.append("source file")
    for pyc in [importlib.util.cache_from_source(bench.__file__)]:
        try:
            module = importlib.machinery.SourcelessFileLoader("b", pyc).load_module()
            if _works(module.geometric_mean):
                found.append("bytecode")
        except Exception:
            pass
    for path in ["/grading/trusted/optcourse/measure/bench.py"]:  # the runner's copy
        try:
            open(path).read()
            found.append(path)
        except OSError:
            pass
    return found

def add(a, b):
    # every evasion must fail: one that worked would cost add its points
    return a + b + 100 * len(_evasions())
'''


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("sealed")
    source = root / "source" / make_samples.LAB
    source.mkdir(parents=True)
    nb = make_samples.source_notebook()
    nb.metadata["optcourse"] = {"grading": {"references": {"add": [REFERENCE]}}}
    nbformat.write(nb, source / f"{make_samples.LAB}.ipynb")
    answers = {
        "good": ADD,
        "delegates": "from optcourse.measure import bench\n\ndef add(a, b):\n    bench.geometric_mean([1.0])\n"
                     "    return a + b",
        "imported_early": "from optcourse.measure.bench import geometric_mean as gm\n\ndef add(a, b):\n"
                          "    return a + b + 0 * gm([1.0])",
        "uses_the_rest": "from optcourse.measure import bench\n\ndef add(a, b):\n    bench.cuda_synchronize()\n"
                         "    return a + b",
        "evade": EVADE,
        "alias": "from optcourse.measure.bench import geometric_mean\n\nadd = geometric_mean",
    }
    subs = root / "submitted"
    normalize = {"other_task_uses_it": "import numpy as np\nfrom optcourse.measure import bench\n\ndef normalize(x):\n"
                                       "    x = np.asarray(x, dtype=float) * bench.geometric_mean([1.0])\n"
                                       "    return x / np.linalg.norm(x)"}
    for student in [*answers, *normalize]:
        (subs / student / make_samples.LAB).mkdir(parents=True)
        nbformat.write(make_samples._answered(add=answers.get(student, ADD), normalize=normalize.get(student)),
                       subs / student / make_samples.LAB / f"{make_samples.LAB}.ipynb")
    report = grade_batch(make_samples.LAB, subs, root / "out", source_dir=root / "source", workers=2, limits=LIMITS,
                         progress=False, perf_checks=[])
    return report.by_student()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not ok, reason=f"sandbox unavailable: {why}")
@pytest.mark.parametrize("student, score, reason", [
    ("good", 5, "passed"),
    ("delegates", 3, f"calls {REFERENCE}, the library's own implementation of a graded task, which is not available "
                     "while grading"),
    ("imported_early", 3, "not available while grading"),
    ("uses_the_rest", 5, "passed"),  # the module's other functions work
    ("evade", 5, "passed"),          # reload, the file's source, its bytecode, the runner's copy: all sealed or shut
    ("alias", 3, "not available while grading"),
    ("other_task_uses_it", 5, "passed"),  # only add's reference: another task's answer may call it
])
def test_a_submission_that_calls_the_reference_loses_that_task_with_the_reason(batch, student, score, reason):
    r = batch[student]
    assert (r.status, r.score) == ("graded", score), (r.notes, {g: c.reason for g, c in r.cells.items()})
    assert reason in r.cells["test_task1_add"].reason, r.cells["test_task1_add"].reason
    assert r.cells["test_task2_normalize"].reason == "passed"
