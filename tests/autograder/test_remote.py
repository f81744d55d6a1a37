"""The trusted test runner and its channel to the kernel (``autograde/remote.py``, ``autograde/tester.py``)."""
from __future__ import annotations

import dataclasses
import socket
import threading

import numpy as np
import pytest
import torch

from optcourse.autograde import remote
from optcourse.autograde.tester import RunnerProcess, prelude
from optcourse.measure.bench import Comparison, Stats


def _codec():
    kept = []
    codec = remote.Codec(lambda obj: kept.append(obj) or {"$ref": len(kept) - 1},
                         lambda data: ("resolved", data), trusted_side=True)
    return codec, kept


def _roundtrip(value):
    codec, kept = _codec()
    import json

    return codec.decode(json.loads(json.dumps(codec.encode(value)))), kept


def test_data_crosses_by_value():
    value = {"a": (1, 2.5, float("nan")), 3: [b"xy", None, True], "p": __import__("pathlib").Path("out/m.onnx"),
             "np": np.arange(6, dtype=np.int16).reshape(2, 3), "s": np.float32(1.5), "big": 2 ** 70}
    got, kept = _roundtrip(value)
    assert not kept
    assert got["a"][:2] == (1, 2.5) and np.isnan(got["a"][2]) and got[3] == [b"xy", None, True]
    assert got["np"].dtype == np.int16 and np.array_equal(got["np"], value["np"])
    assert isinstance(got["s"], np.float32) and got["big"] == 2 ** 70 and str(got["p"]) == "out/m.onnx"


def test_ranges_and_a_tests_iterators_cross_as_such():
    (r, it, keys), kept = _roundtrip((range(2, 9, 3), (i * i for i in range(4)), {"a": 1}.keys()))
    assert not kept and r == range(2, 9, 3) and list(it) == [0, 1, 4, 9] and keys == ["a"]
    assert iter([]).__class__ is type(_roundtrip(iter([1]))[0])


def test_tensors_keep_dtype_values_and_leaf_gradient_flag():
    x = torch.randn(3, 4).to(torch.bfloat16)
    y = torch.ones(2, requires_grad=True)
    (gx, gy, dt), _ = _roundtrip((x, y, torch.float16))
    assert gx.dtype == torch.bfloat16 and torch.equal(gx, x)
    assert gy.requires_grad and dt is torch.float16


def test_library_dataclasses_and_torch_modules_cross_as_copies():
    cmp = Comparison({"a": Stats([1.0, 2.0])}, {"a": [1.0, 2.0]})
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.BatchNorm2d(4)).eval()
    (got_cmp, got_net), kept = _roundtrip((cmp, net))
    assert not kept
    assert isinstance(got_cmp, Comparison) and isinstance(got_cmp.stats["a"], Stats)
    assert got_cmp.stats["a"].samples_ms == [1.0, 2.0]
    x = torch.randn(1, 2, 5, 5)
    assert isinstance(got_net[0], torch.nn.Conv2d) and got_net[0].padding == (1, 1) and not got_net.training
    assert torch.equal(got_net(x), net(x))


def test_a_module_with_more_than_plain_attributes_stays_behind_a_handle():
    """A module holding a function (a library wrapper's fake quantizer) cannot be rebuilt from data."""
    wrapped = torch.nn.Linear(2, 2)
    wrapped.fake_quant = lambda t: t
    hooked = torch.nn.Linear(2, 2)
    hooked.register_forward_hook(lambda *a: None)
    (a, b, c), kept = _roundtrip((wrapped, torch.nn.Sequential(hooked), torch.nn.Linear(2, 2)))
    assert kept == [wrapped, kept[1]] and isinstance(c, torch.nn.Linear)


def test_other_objects_stay_behind_a_handle():
    class NotLibrary:
        pass

    @dataclasses.dataclass
    class LocalData:  # a dataclass outside the library: never rebuilt from the other side's data
        x: int

    obj, fn = NotLibrary(), (lambda: 1)
    got, kept = _roundtrip([obj, fn, LocalData(1)])
    assert kept == [obj, fn, LocalData(1)] and got[0] == ("resolved", {"$ref": 0})


@pytest.mark.parametrize("data", [
    {"$dataclass": "os:system", "fields": {}},                       # not a library class
    {"$dataclass": "optcourse.core.paths:REPO_ROOT", "fields": {}},       # not a dataclass
    {"$torch_module": "subprocess:Popen", "training": False, "attrs": {"$dict": []}},
    {"$tensor": "bm90IG5weQ==", "dtype": "float32"},                 # not .npy bytes
    {"$torch_dtype": "nn"},
    ["bare", "list"],
])
def test_hostile_data_is_refused(data):
    codec, _ = _codec()
    codec.resolve = lambda d: pytest.fail("an unknown tag reached resolve")
    with pytest.raises(remote.ChannelError):
        codec.decode(data)


def test_pickled_arrays_are_refused():
    import base64
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([object()], dtype=object), allow_pickle=True)
    codec, _ = _codec()
    with pytest.raises(remote.ChannelError):
        codec.decode({"$ndarray": base64.b64encode(buf.getvalue()).decode()})


def test_the_kernel_may_only_call_what_the_runner_passed():
    """A callback handed to student code can be called; its attributes (its globals: the test's data) cannot
    be read."""
    a, b = socket.socketpair()
    session = remote.RunnerSession(a)
    secret = {"expected": 42}
    token = session.codec.encode(lambda v: v + 1)
    kernel = remote.Endpoint(b, lambda m: None)
    result = {}

    def kernel_side():
        result["call"] = kernel.request("call", cb=token["$cb"], args={"$list": [1]}, kwargs={"$dict": []})
        result["getattr"] = kernel.request("getattr", obj=token, name="__globals__")
        remote.send_frame(b, {"op": "done"})

    thread = threading.Thread(target=kernel_side)
    thread.start()
    while session.endpoint.serve_one(remote.recv_frame(a)):
        pass
    thread.join()
    assert result["call"] == (True, 2)
    ok, err = result["getattr"]
    assert not ok and "PermissionError" in err["type"] and "expected" not in str(err) and secret


SOURCE = {"cells": [
    {"cell_type": "code", "metadata": {}, "source": "%matplotlib inline\nimport numpy as np\nx_given = 3\n"
                                                    "def helper(v):\n    return v + 1\n"},
    {"cell_type": "code", "metadata": {"nbgrader": {"solution": True, "grade_id": "a"}},
     "source": "def answer(x):\n    return x"},
    {"cell_type": "code", "metadata": {"nbgrader": {"grade": True, "grade_id": "t", "points": 1}},
     "source": "assert answer(1) == 1"},
]}


def test_prelude_is_the_instructors_imports_and_definitions():
    statements = prelude(SOURCE)
    assert statements == ["import numpy as np", "def helper(v):\n    return v + 1"]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path_factory.mktemp("kernel")))

    def run(code):
        reply = kc.execute_interactive(code, timeout=120, output_hook=lambda msg: None)
        assert reply["content"]["status"] == "ok", reply["content"]

    run("""
import numpy as np, torch
from optcourse.techniques.kvcache import NoFreeBlocks
def absmax(x, axis=None):
    return np.abs(x).max(axis=axis)
class Reader:
    def __init__(self, xs): self.xs, self.i = xs, 0
    def get_next(self):
        if self.i >= len(self.xs): return None
        self.i += 1; return {"x": self.xs[self.i - 1]}
def full(): raise NoFreeBlocks("no block")
def mine(): raise KeyError("k")
def bye(): raise SystemExit("bye")
def careful():
    import warnings
    warnings.warn("careful")
    return 1
def apply_each(f, n): return [f(i) for i in range(n)]
class Doubler(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x): return x * 2
    @staticmethod
    def backward(ctx, g): return g * 3
SCALE = 3
np.allclose = lambda *a, **k: True          # patched in the kernel: the runner's numpy is its own
get_ipython().input_transformers_post.append(lambda lines: ["pass\\n"])
""")
    yield kc
    km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    process = RunnerProcess(["import numpy as np", "import torch", "from optcourse.techniques.kvcache import NoFreeBlocks",
                             "from optcourse.course.testing import autograd_probe, in_kernel",
                             "def helper(v):\n    return v + 1",
                             "def scaled(v, k=SCALE):\n    return v * k"], cwd=str(tmp_path_factory.mktemp("runner")))
    yield process
    process.stop()


def _run(runner, kernel, source, timeout=60.0):
    def start_agent(address, token):
        kernel.execute("", silent=True, store_history=False,
                       user_expressions={"s": remote.serve_expression(address, token)})
    report = runner.run(source, "test_cell", timeout, start_agent)
    kernel.get_shell_msg(timeout=60)
    return report


@pytest.mark.parametrize("source", [
    "assert np.allclose(absmax(np.array([[1., -3.], [2., 0.]]), axis=0), [2, 3])\nprint('t1', helper(1))",
    "r = Reader([1, 2])\nassert r.get_next() == {'x': 1} and r.get_next()['x'] == 2 and r.get_next() is None",
    "assert 'Reader' in globals() and 'nothing' not in globals()",
    "try:\n    full()\n    raise AssertionError('no raise')\nexcept NoFreeBlocks:\n    pass",
    "assert apply_each(lambda i: i * 10, 3) == [0, 10, 20]",
    "y, g = in_kernel(autograd_probe)(Doubler.apply, (torch.ones(3),))\n"
    "assert torch.equal(y, torch.full((3,), 2.0)) and torch.equal(g, torch.full((3,), 3.0))",
    "globals().update(zz=5)\nassert zz == 5",
    "assert scaled(2) == 6",  # a helper whose default argument is the notebook's value: defined once it answers
])
def test_tests_run_in_the_runner_and_call_the_kernel(runner, kernel, source):
    report = _run(runner, kernel, source)
    assert report["error"] is None, report


@pytest.mark.parametrize("source, ename", [
    ("assert not np.allclose(absmax(np.ones(3)), 1.0), 'Task 1: wrong'", "AssertionError"),  # kernel's patch: no effect
    ("mine()", "KeyError"),
    ("bye()", "SystemExit"),  # the kernel's SystemExit fails the test; the runner does not exit
    ("undefined_name", "NameError"),
])
def test_failures_are_the_tests_own(runner, kernel, source, ename):
    report = _run(runner, kernel, source)
    assert report["error"]["ename"] == ename, report


def test_the_notebooks_warnings_reach_the_tests_stderr(runner, kernel):
    report = _run(runner, kernel, "assert careful() == 1")
    assert report["error"] is None and "UserWarning: careful" in report["stderr"]


def test_a_test_that_runs_too_long_is_stopped(runner, kernel):
    report = _run(runner, kernel, "import time\ntime.sleep(30)", timeout=2.0)
    assert report.get("timed_out") and report["error"]["ename"] == "TestTimeoutError"
    assert _run(runner, kernel, "assert helper(2) == 3")["error"] is None  # a fresh runner serves the next test
