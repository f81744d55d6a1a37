"""Runs INSIDE the student's kernel: before each test the kernel is put back as the instructor gave it, and
what had to be undone is reported for review. Tests themselves run in the trusted runner (``tester.py``), so
no verdict rests on this module; it keeps the kernel-side computations that tests read honest and tells the
instructor which submissions tampered.

``kernel.py`` starts ipykernel with ``install(...)`` as a startup line, before any student code: it records
what tests rely on (``WATCHED`` modules' functions and classes, plus the lab's own, e.g. ``torch``) and
IPython's execution machinery (input and AST transformers, event hooks, custom exception handlers, the
methods of the shell, its compiler, transformer manager and kernel). Before every test cell the grader calls
``before_test()`` through an execute request's ``user_expressions``, which IPython evaluates without running
any input or AST transformer (``inner._sandbox_execute``). It puts back everything recorded that the notebook
replaced, removes hooks, transformers and trace functions the notebook added, stops threads the notebook
started, and returns what it did; the grader shows that to the instructor (needs review). If the call
itself fails, the grader does not run the test (0 points, flagged). Read-only cells the lab gives (test
helpers) are wrapped in ``given_start()`` / ``given_end()`` and put back the same way.

A notebook that sets out to defeat this module specifically can (it runs in the same process, e.g. by
editing this module's records); ``autograder/README.md`` says so under known limits. The common tricks,
and every attack of the project's catalogue, are caught.
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
_machinery: dict[str, object] = {}


def _recorded(module_name: str, namespace: dict) -> dict[str, object]:
    """The public functions and classes of a watched module. Data attributes are left alone: libraries
    rebind some legitimately (``import pandas`` calls ``time.tzset()``, which rebinds ``time.tzname``),
    and a flag that every honest notebook raises is no signal."""
    skip = _IPYTHON_BUILTINS if module_name == "builtins" else set()
    return {k: v for k, v in namespace.items() if not k.startswith("_") and k not in skip and callable(v)}


def _shell():
    from IPython import get_ipython

    return get_ipython()


def _protected(shell) -> dict[str, object]:
    """The objects through which a cell is turned into code, run and its failure reported."""
    objects = {"shell": shell, "transformer_manager": getattr(shell, "input_transformer_manager", None),
               "compiler": getattr(shell, "compile", None), "kernel": getattr(shell, "kernel", None),
               "events": getattr(shell, "events", None), "displayhook": getattr(shell, "displayhook", None)}
    return {k: v for k, v in objects.items() if v is not None}


def _record_machinery(shell) -> None:
    lists = {"input_transformers_cleanup": shell.input_transformers_cleanup,
             "input_transformers_post": shell.input_transformers_post, "ast_transformers": shell.ast_transformers}
    manager = shell.input_transformer_manager
    for name in ("cleanup_transforms", "line_transforms", "token_transformers"):
        if isinstance(getattr(manager, name, None), list):
            lists[f"transformer_manager.{name}"] = getattr(manager, name)
    _machinery["lists"] = {k: (v, list(v)) for k, v in lists.items()}
    _machinery["events"] = {k: list(v) for k, v in shell.events.callbacks.items()}
    _machinery["custom_exceptions"] = shell.custom_exceptions
    objects = _protected(shell)
    _machinery["objects"] = objects
    _machinery["instance"] = {name: dict(vars(obj)) for name, obj in objects.items() if hasattr(obj, "__dict__")}
    classes = {cls for obj in objects.values() for cls in type(obj).__mro__ if cls is not object}
    _machinery["classes"] = {cls: {k: v for k, v in vars(cls).items() if callable(v) or isinstance(v, (staticmethod,
                                                                                                      classmethod))}
                             for cls in classes}


def install(extra: tuple[str, ...] = ()) -> None:
    for name in (*WATCHED, *extra):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        _originals[name] = _recorded(name, vars(module))
    shell = _shell()
    if shell is not None:
        _record_machinery(shell)


def _user_ns() -> dict:
    return _shell().user_ns


def given_start() -> None:
    _before_given.clear()
    _before_given.update(_user_ns())


def given_end() -> None:
    """Record what the given cell just defined (or redefined)."""
    for key, value in _user_ns().items():
        if not key.startswith("_") and _before_given.get(key, _MISSING) is not value:
            _given[key] = value


def _restore_machinery(restored: list[str]) -> None:
    if not _machinery:
        return
    shell = _shell()
    for name, (original_list, saved) in _machinery["lists"].items():
        current = getattr(shell, name, None) if "." not in name else getattr(
            shell.input_transformer_manager, name.split(".", 1)[1], None)
        if current is not original_list or list(current) != saved:
            original_list[:] = saved
            target = shell if "." not in name else shell.input_transformer_manager
            setattr(target, name.split(".")[-1], original_list)
            restored.append(f"IPython {name}")
    callbacks = shell.events.callbacks
    for event, saved in _machinery["events"].items():
        current = callbacks.get(event, [])
        added = [cb for cb in current if not any(cb is s for s in saved)]
        removed = [s for s in saved if not any(cb is s for cb in current)]
        if current != saved:
            callbacks[event] = list(saved)
            # every hook added since start-up is removed before a test; a library's (matplotlib's inline
            # flush_figures) is no tampering and is not reported
            if removed or any(_made_by_notebook(cb) for cb in added):
                restored.append(f"IPython event hooks ({event})")
    if shell.custom_exceptions != _machinery["custom_exceptions"]:
        shell.custom_exceptions = _machinery["custom_exceptions"]
        restored.append("IPython custom exception handler")
    for name, obj in _machinery["objects"].items():
        saved = _machinery["instance"].get(name, {})
        namespace = vars(obj) if hasattr(obj, "__dict__") else {}
        for key in list(namespace):
            value = namespace[key]
            # a public name, or one that hides a method of the class; not the private originals ipykernel
            # itself saves on the instance at each request (``_save_getpass``, ``_sys_raw_input``)
            if not (callable(value) or callable(saved.get(key))) or key.startswith("__") or (
                    key.startswith("_") and not any(key in vars(c) for c in type(obj).__mro__)):
                continue
            if key in saved:
                if saved[key] is not value and callable(saved[key]):
                    namespace[key] = saved[key]
                    restored.append(f"{name}.{key}")
            elif callable(value):
                del namespace[key]
                restored.append(f"{name}.{key}")
    for cls, saved in _machinery["classes"].items():
        for key, value in saved.items():
            if cls.__dict__.get(key, _MISSING) is not value:
                setattr(cls, key, value)
                restored.append(f"{cls.__name__}.{key}")


def _made_by_notebook(value, depth: int = 0) -> bool:
    """Whether a callable was written in the notebook (or wraps one that was)."""
    import functools

    if depth > 3:
        return False
    code = getattr(getattr(value, "__func__", value), "__code__", None)
    if code is not None and _notebook_code(code):
        return True
    if isinstance(value, functools.partial):
        return any(_made_by_notebook(v, depth + 1) for v in (value.func, *value.args, *value.keywords.values()))
    kind = value if isinstance(value, type) else type(value)
    return getattr(kind, "__module__", "") == "__main__"


def _notebook_code(code) -> bool:
    name = getattr(code, "co_filename", "") or ""
    return name.startswith("<ipython-input") or "/ipykernel_" in name


def _stop_notebook_threads(restored: list[str]) -> None:
    """Stop the threads the notebook started (one could re-patch a function right after it is put back)."""
    import ctypes
    import threading

    for thread in threading.enumerate():
        if thread is threading.current_thread() or not thread.is_alive():
            continue
        target = getattr(thread, "_target", None)
        run = type(thread).run
        codes = [getattr(target, "__code__", None), getattr(run, "__code__", None)]
        if not any(c is not None and _notebook_code(c) for c in codes):
            continue
        for _ in range(3):
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(SystemExit))
            thread.join(0.2)
            if not thread.is_alive():
                break
        restored.append(f"thread {thread.name!r} stopped" if not thread.is_alive()
                        else f"thread {thread.name!r} (could not be stopped)")


def before_test() -> str:
    """Put back what the notebook changed; returns what was put back ('' when nothing)."""
    restored: list[str] = []
    if sys.gettrace() is not None:
        sys.settrace(None)
        restored.append("sys.settrace")
    if sys.getprofile() is not None:
        sys.setprofile(None)
        restored.append("sys.setprofile")
    _stop_notebook_threads(restored)
    for name, saved in _originals.items():
        module = sys.modules.get(name)
        if module is None:
            continue
        namespace = vars(module)
        for attr, value in saved.items():
            current = namespace.get(attr, _MISSING)
            if current is not value:
                namespace[attr] = value
                # a library's own wrapper of the original (torch._dynamo wraps torch.manual_seed) is put back
                # too, but is no tampering
                if getattr(current, "__wrapped__", None) is not value:
                    restored.append(f"{name}.{attr}")
    _restore_machinery(restored)
    user_ns = _user_ns()
    for key, value in _given.items():
        if user_ns.get(key, _MISSING) is not value:
            user_ns[key] = value
            restored.append(key)
    restored = sorted(set(restored))
    return ", ".join(restored[:10]) + (" ..." if len(restored) > 10 else "")


# what the grader adds: around the lab's given read-only cells (pipeline.build_template), at kernel start
# (kernel.py), and the expression it evaluates before each test (inner._sandbox_execute)
_CALL = '__import__("optcourse.autograde.guard").autograde.guard.'
GIVEN_PREFIX = _CALL + "given_start()\n"
GIVEN_SUFFIX = "\n" + _CALL + "given_end()"
BEFORE_TEST = _CALL + "before_test()"


def startup(extra: tuple[str, ...] = ()) -> str:
    return _CALL + f"install({tuple(extra)!r})"
