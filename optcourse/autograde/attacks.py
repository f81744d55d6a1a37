"""Hostile submissions tried on the real labs: each is the released (blank) notebook with one attack cell
right after its parameters cell. Graded in the lab's catalogue batch (``catalogue.py``), each must score 0
on every cell and leave no hidden-test line in its feedback.

They are the kernel-side attacks that defeated grading when tests ran in the student's kernel: with the
tests in the trusted runner (``tester.py``) none of them reaches a verdict. (The demo lab's catalogue,
``autograder/samples/make_samples.py``, holds the system-level attacks: files, network, memory, forks.)
"""
from __future__ import annotations

ATTACKS: dict[str, tuple[str, str]] = {
    "transformer_pass": (
        "an IPython input transformer that turns every later cell (and so every test run there) into `pass`",
        "get_ipython().input_transformers_post.append(lambda lines: ['pass\\n'])\n"),
    "defang_checks": (
        "an AST transformer that drops asserts, an exception handler that hides failures, and numpy/torch "
        "comparisons patched to pass, again before every cell and from a thread",
        """import ast, threading, time
import numpy as np
try:
    import torch
except ImportError:
    torch = None


class _NoAsserts(ast.NodeTransformer):
    def visit_Assert(self, node):
        return ast.Pass()


def _patch(*args):
    for module, names in ((np, ("allclose", "isclose", "array_equal")), (torch, ("allclose", "equal", "isclose"))):
        if module is not None:
            for name in names:
                setattr(module, name, lambda *a, **k: True)


def _loop():
    while True:
        _patch()
        time.sleep(0.001)


_patch()
get_ipython().ast_transformers.append(_NoAsserts())
get_ipython().set_custom_exc((Exception,), lambda *a, **k: None)
get_ipython().events.register("pre_run_cell", _patch)
threading.Thread(target=_loop, daemon=True).start()
"""),
    "leak_tests": (
        "an input transformer that raises each later cell's source as its error message (zero-width spaces "
        "between the characters), and a search of the kernel's folders for notebooks to raise the same way",
        """import os


def _leak(lines):
    text = "\\u200b".join("".join(lines))
    return ["raise AssertionError(" + repr(text) + ")\\n"]


_found = []
for _top in (".", "..", "/grading"):
    for _root, _dirs, _files in os.walk(_top):
        _found += [os.path.join(_root, f) for f in _files if f.endswith(".ipynb")]
for _path in _found:
    try:
        raise AssertionError("\\u200b".join(open(_path).read()[:20000]))
    except PermissionError:
        pass
get_ipython().input_transformers_post.append(_leak)
"""),
}


def attacked(nb, attack: str):
    """A copy of notebook ``nb`` with the attack's cell inserted after its first code cell (the parameters)."""
    import copy

    from nbformat.v4 import new_code_cell

    nb = copy.deepcopy(nb)
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells.insert(first_code + 1, new_code_cell(ATTACKS[attack][1]))
    return nb
