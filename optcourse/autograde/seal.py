"""Graded work cannot be delegated to the library: the sealed references of a lab.

Every graded function of a lab has a reference in the course library (``entropy_threshold`` of lab 01 is
``optcourse.techniques.calibration.entropy_threshold``). A lab names them in its source notebook's metadata
(``optcourse.grading.references``, dotted names) and in its instructions. In the grading sandbox the library's
modules that hold them are *sealed*: the sandbox binds a sealed copy of each such file over the library's
(``sandbox._mount_script``), so ``import``, ``importlib.reload`` or exec'ing the file's source all give the sealed
names. A sealed function (for a class: each of its methods) raises ``ReferenceNotAvailable`` when it is called
by the notebook's own code while a test runs, i.e. when the grader's agent (``remote.serve``) is on the call
stack and the nearest caller that is not a third-party package (torch, numpy) is notebook code, not the
library. So the lab's given cells, the library's own functions that use a reference internally, and the
trusted test runner (a separate process, whose hidden tests use the references as oracles) are unaffected.

What this stops is delegation (``return cal.entropy_threshold(...)``); the library's source is the students'
own copy, so pasting it into a notebook is possible and is an integrity matter, not a grading one. Outside the
sandbox nothing is sealed: a student may call the references while working, as the instructions say.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import os
import pathlib
import sys

from optcourse.core.paths import PACKAGE_DIR

MESSAGE = ("{name} is the library's own implementation of a graded task and is not available to the notebook's "
           "code while its tests run: implement it in your notebook (see the lab's instructions)")
_LIBRARY = str(PACKAGE_DIR) + os.sep
_THIRD_PARTY = tuple({os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
                     | {p + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
_AGENT = str(PACKAGE_DIR / "autograde" / "remote.py")


class ReferenceNotAvailable(RuntimeError):
    """Raised in the grading sandbox by a library reference of a graded task called from the notebook's code."""


def _codes(answer) -> set:
    """The code objects of a notebook answer: a function's, or those of a class's own methods."""
    if inspect.isfunction(answer):
        return {answer.__code__}
    if isinstance(answer, type):
        out = set()
        for value in vars(answer).values():
            value = getattr(value, "__func__", value)
            if inspect.isfunction(value):
                out.add(value.__code__)
        return out
    return set()


def _is_alias(answer, target) -> bool:
    """The notebook's answer is the reference itself: the same object, a partial of it, or a subclass."""
    if answer is target or getattr(answer, "func", None) is target:
        return True
    return isinstance(target, type) and isinstance(answer, type) and issubclass(answer, target)


def _refused(frame, answers: tuple[str, ...], target) -> bool:
    """Whether a call made by ``frame`` delegates one of the notebook's graded ``answers`` to the reference
    ``target``. Only while a test runs (the grader's agent, ``remote.serve``, is on the stack). Walking up from the
    caller and skipping third-party packages (torch, numpy): a library frame first is the library's own use
    (allowed); the agent first means the answer *is* the reference (an alias, a partial, a subclass); notebook
    frames first are refused when one of them, on the way up to the agent, runs an answer's own code (so a
    helper of the answer's cannot launder the call, and the notebook's other answers may use the reference)."""
    notebook_codes = []  # code objects of the notebook frames between the call and the agent
    while frame is not None:
        name = frame.f_code.co_filename
        if name == _AGENT:
            import __main__

            namespace = vars(__main__)
            if not notebook_codes:
                return any(_is_alias(namespace.get(a), target) for a in answers)
            forbidden = set().union(*(_codes(namespace.get(a)) for a in answers))
            return any(code in forbidden for code in notebook_codes)
        if name.startswith(_LIBRARY):
            if not notebook_codes:
                return False  # the library's own use (checked first: no namespace scan on the library's hot paths)
        elif not name.startswith(_THIRD_PARTY):
            notebook_codes.append(frame.f_code)
        frame = frame.f_back
    return False  # no test is running


def _guarded(reference: str, fn, answers: tuple[str, ...], target=None):
    message = MESSAGE.format(name=reference)

    @functools.wraps(fn)
    def sealed(*args, **kwargs):
        if _refused(sys._getframe(1), answers, target or sealed):
            raise ReferenceNotAvailable(message)
        return fn(*args, **kwargs)

    return sealed


def seal(reference: str, obj, answers: list[str]):
    """What a sealed name is bound to in the sandbox's copy of the library: the function wrapped by the check
    above, for the notebook's graded functions or classes ``answers``; for a class, the class with each of its own
    methods wrapped (construction, an autograd Function's ``forward``, a subclass's ``super()`` calls)."""
    answers = tuple(answers)
    if not isinstance(obj, type):
        return _guarded(reference, obj, answers)
    for key, value in list(vars(obj).items()):
        if isinstance(value, (staticmethod, classmethod)):
            setattr(obj, key, type(value)(_guarded(reference, value.__func__, answers, obj)))
        elif inspect.isfunction(value):
            setattr(obj, key, _guarded(reference, value, answers, obj))
    return obj


def sealed_source(source: str, module: str, names: dict[str, list[str]]) -> str:
    """``source`` of ``module`` with ``name = seal(...)`` after the top-level definition of each of ``names``
    (name -> the notebook's answers it may not serve; the rest of the module is kept as written)."""
    tree = ast.parse(source)
    body, found = [], set()
    for node in tree.body:
        body.append(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in names:
            ref = f"{module}.{node.name}"
            stmt = ast.parse(f"{node.name} = __import__('optcourse.autograde.seal', fromlist=['seal'])"
                             f".seal({ref!r}, {node.name}, {sorted(names[node.name])!r})").body[0]
            body.append(ast.copy_location(stmt, node))
            found.add(node.name)
    missing = set(names) - found
    if missing:
        raise ValueError(f"{module} has no top-level function or class {sorted(missing)} to seal")
    tree.body = body
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def module_file(module: str) -> pathlib.Path:
    """The source file of library module ``module`` (``optcourse.techniques.calibration``)."""
    if not module.startswith("optcourse."):
        raise ValueError(f"{module!r}: only modules of the course library (optcourse.*) can be sealed")
    path = PACKAGE_DIR.joinpath(*module.split(".")[1:]).with_suffix(".py")
    if not path.is_file():
        raise ValueError(f"{module!r} is not a module of the course library (no {path})")
    return path


def split(reference: str) -> tuple[str, str]:
    """``optcourse.techniques.calibration.entropy_threshold`` -> (module, name)."""
    module, _, name = reference.rpartition(".")
    if not module or not name.isidentifier():
        raise ValueError(f"{reference!r} is not a dotted name of a library function or class")
    return module, name


def sealed_files(references: dict[str, list[str]]) -> dict[str, str]:
    """Library file (its path in the package, ``techniques/calibration.py``) -> its sealed source, for a lab's ``references`` (the notebook's graded function or class ->
    the library names it may not delegate to); an unknown name is an error (the lab has drifted from the library)."""
    by_module: dict[str, dict[str, list[str]]] = {}
    for answer, refs in references.items():
        for ref in refs:
            module, name = split(ref)
            by_module.setdefault(module, {}).setdefault(name, []).append(answer)
    return {str(module_file(m).relative_to(PACKAGE_DIR)): sealed_source(module_file(m).read_text(), m, names)
            for m, names in by_module.items()}


def references_of(nb) -> dict[str, list[str]]:
    """The references a lab's source notebook names (``metadata.optcourse.grading.references``: graded function
    or class -> library names), checked."""
    refs = nb.metadata.get("optcourse", {}).get("grading", {}).get("references", {})
    if not isinstance(refs, dict) or not all(isinstance(k, str) and k.isidentifier() and isinstance(v, list)
                                             and all(isinstance(r, str) for r in v) for k, v in refs.items()):
        raise ValueError("metadata optcourse.grading.references must map each graded function's name to a list "
                         "of dotted library names")
    for ref in (r for v in refs.values() for r in v):
        module, _ = split(ref)
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"reference {ref!r}: no module {module}")
    return {k: list(v) for k, v in refs.items()}  # sealed_files(refs) checks each name is defined at top level
