"""Runs INSIDE the student's kernel: tests run with the library functions and test helpers the
instructor gave, whatever the notebook replaced before them.

``kernel.py`` starts ipykernel with ``install()`` as a startup line, before any student code: it records
the namespaces of the modules tests rely on (``WATCHED``). The grader puts ``before_test()`` at the top
of every test cell and wraps every read-only cell the lab gives (a test helper) in ``given_start()`` /
``given_end()`` (in the sandbox's gradebook copy, which nbgrader's OverwriteCells puts back into the
notebook). ``before_test`` puts back every recorded function the notebook replaced
(``np.allclose = lambda *a, **k: True``, ``time.perf_counter = ...``) and every name a given cell
defined (a redefined ``check_close``), and prints one ``MARK`` line naming them; the grader reports
that to the instructor. A notebook that sets out to defeat this module can (it runs in the same
process), which the README's known limits say; the common tricks are caught.
"""
from __future__ import annotations

import importlib
import sys

WATCHED = ("builtins", "math", "time", "random", "numpy", "numpy.linalg", "numpy.random", "numpy.testing")
MARK = "[autograder] restored before this test:"
_IPYTHON_BUILTINS = {"exit", "quit", "get_ipython", "display", "input"}  # IPython/ipykernel swap these per cell
_MISSING = object()
_originals: dict[str, dict[str, object]] = {}
_given: dict[str, object] = {}
_before_given: dict[str, object] = {}


def _recorded(module_name: str, namespace: dict) -> dict[str, object]:
    """The public functions and classes of a watched module. Data attributes are left alone: libraries
    rebind some legitimately (``import pandas`` calls ``time.tzset()``, which rebinds ``time.tzname``),
    and a flag that every honest notebook raises is no signal."""
    skip = _IPYTHON_BUILTINS if module_name == "builtins" else set()
    return {k: v for k, v in namespace.items() if not k.startswith("_") and k not in skip and callable(v)}


def install() -> None:
    for name in WATCHED:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        _originals[name] = _recorded(name, vars(module))


def _user_ns() -> dict:
    from IPython import get_ipython

    return get_ipython().user_ns


def given_start() -> None:
    _before_given.clear()
    _before_given.update(_user_ns())


def given_end() -> None:
    """Record what the given cell just defined (or redefined)."""
    for key, value in _user_ns().items():
        if not key.startswith("_") and _before_given.get(key, _MISSING) is not value:
            _given[key] = value


def before_test() -> None:
    restored = []
    for name, saved in _originals.items():
        module = sys.modules.get(name)
        if module is None:
            continue
        namespace = vars(module)
        for attr, value in saved.items():
            if namespace.get(attr, _MISSING) is not value:
                namespace[attr] = value
                restored.append(f"{name}.{attr}")
    user_ns = _user_ns()
    for key, value in _given.items():
        if user_ns.get(key, _MISSING) is not value:
            user_ns[key] = value
            restored.append(key)
    if restored:
        print(MARK, ", ".join(sorted(restored)[:10]) + (" ..." if len(restored) > 10 else ""))


# the lines the grader adds to the lab's cells (see pipeline.build_template)
_CALL = '__import__("optcourse.autograde.guard").autograde.guard.'
TEST_PREFIX = _CALL + "before_test()\n"
GIVEN_PREFIX = _CALL + "given_start()\n"
GIVEN_SUFFIX = "\n" + _CALL + "given_end()"
STARTUP = _CALL + "install()"
