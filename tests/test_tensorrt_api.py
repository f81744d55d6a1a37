"""Every ``trt.<Name>`` / ``trt.<Enum>.<MEMBER>`` the course uses exists in the pinned TensorRT (issue 21).

TensorRT itself installs only on a GPU machine, but its Python bindings are a small wheel of their own
(``tensorrt-cu13-bindings``, pinned in requirements/gpu.lock). The test downloads that exact wheel once
into ``.cache/tensorrt-bindings/`` and imports its ``tensorrt.so`` with empty stand-ins for
``libnvinfer``/``libnvonnxparser``/``libnvinfer_plugin`` (the module only links to their factory
functions; importing calls none of them), so the API is read from the real module, enum members
included. A ``strings`` scan of the .so would be weaker: the linker stores ``INT8`` as the tail of
``UINT8``, so ``BuilderFlag.INT8`` would look present.

Scanned: optcourse/**/*.py and every cell of lectures/, labs/ and solutions/ notebooks. Prose that
names an API TensorRT no longer has writes it without the ``trt.`` prefix (``BuilderFlag.FP16``).
Without PyPI the test skips on a workstation and fails in CI (``CI`` set), where PyPI is reachable.
``trtexec`` flags are not checked: no package on PyPI ships ``trtexec`` or its option list.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from optcourse.core.paths import REPO_ROOT
from tests.test_browser import in_ci

CACHE = REPO_ROOT / ".cache" / "tensorrt-bindings"
TRT_NAME = re.compile(r"\btrt((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
STUB_LIBRARIES = ("libnvinfer.so.11", "libnvinfer_plugin.so.11", "libnvonnxparser.so.11")
# what tensorrt.so imports from those libraries (`nm -D --undefined-only tensorrt.so`)
STUB_SOURCE = "\n".join(f"void *{name}(void) {{ return 0; }}" for name in (
    "createInferBuilder_INTERNAL", "createInferRefitter_INTERNAL", "createInferRuntime_INTERNAL",
    "createNvOnnxParserRefitter_INTERNAL", "createNvOnnxParser_INTERNAL", "getBuilderPluginRegistry",
    "getNvOnnxParserVersion", "getPluginRegistry", "initLibNvInferPlugins"))
# run in a child process: the stand-in libraries never enter the test process
DUMP_API = """
import ctypes, json, sys
for lib in sys.argv[2:]:
    ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
sys.path.insert(0, sys.argv[1])
import tensorrt_bindings as trt
names, containers = set(), set()
def walk(prefix, obj, depth):
    for attr in dir(obj):
        if attr.startswith("__"):
            continue
        name = prefix + "." + attr
        names.add(name)
        value = getattr(obj, attr, None)
        if depth < 3 and isinstance(value, type) and name not in containers:
            containers.add(name)
            walk(name, value, depth + 1)
walk("trt", trt, 1)
print(json.dumps({"version": trt.__version__, "names": sorted(names), "containers": sorted(containers)}))
"""
# issue 21 item 3 rewrites Lab 1's TensorRT part; until then its prose teaches TensorRT 10's builder flags


def pinned_bindings() -> str:
    """``tensorrt-cu13-bindings==11.4.0.106``: the bindings requirement of the GPU lock file."""
    lock = (REPO_ROOT / "requirements" / "gpu.lock").read_text()
    match = re.search(r"^(tensorrt-cu\d+-bindings==\S+)", lock, re.MULTILINE)
    assert match, "requirements/gpu.lock pins no tensorrt-cu*-bindings"
    return match.group(1)


def download_wheel(requirement: str):
    """The pinned wheel from the cache, else from PyPI; None when PyPI cannot be reached."""
    name, version = requirement.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    cached = sorted(CACHE.glob(pattern))
    if cached:
        return cached[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           "--disable-pip-version-check", requirement, "-d", str(CACHE)],
                          capture_output=True, text=True, timeout=300)
    cached = sorted(CACHE.glob(pattern))
    if proc.returncode != 0 or not cached:
        return None
    return cached[0]


@pytest.fixture(scope="module")
def pinned_api() -> dict:
    """``{"version", "names", "containers"}`` of the pinned bindings (names as ``trt.A.B``)."""
    requirement = pinned_bindings()
    version = requirement.split("==")[1]
    api_file = CACHE / f"api-{version}.json"
    if api_file.exists():
        return json.loads(api_file.read_text())
    wheel = download_wheel(requirement)
    if wheel is None:
        message = f"could not download {requirement} from PyPI"
        if in_ci():
            pytest.fail(f"{message} (CI={os.environ.get('CI')}): CI must check the TensorRT API", pytrace=False)
        pytest.skip(message)
    unpacked = CACHE / f"bindings-{version}"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    assert shutil.which("gcc"), "gcc builds the stand-in libraries (apt-get install gcc)"
    source = CACHE / "stub.c"
    source.write_text(STUB_SOURCE + "\n")
    stubs = []
    for soname in STUB_LIBRARIES:
        stub = CACHE / soname
        subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(stub), str(source)],
                       check=True, capture_output=True, timeout=120)
        stubs.append(str(stub))
    proc = subprocess.run([sys.executable, "-c", DUMP_API, str(unpacked), *stubs],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"importing the pinned bindings failed:\n{proc.stderr[-3000:]}"
    api = json.loads(proc.stdout)
    assert api["version"] == version
    api_file.write_text(json.dumps(api))
    return api


def names_used(text: str) -> set[str]:
    """``trt.A``, ``trt.A.B`` ... as written in ``text``."""
    return {"trt" + m.group(1) for m in TRT_NAME.finditer(text)}


def missing_names(used: set[str], api: dict) -> list[str]:
    """The names of ``used`` the API lacks. A chain is followed while it goes through classes (an enum,
    ``trt.Logger``); past an instance (``trt.float16.itemsize``) only its head is checked."""
    names, containers = set(api["names"]), set(api["containers"])
    missing = set()
    for name in used:
        parts = name.split(".")
        for end in range(2, len(parts) + 1):
            prefix = ".".join(parts[:end])
            if prefix not in names:
                missing.add(prefix)
                break
            if prefix not in containers:
                break
    return sorted(missing)


def source_text(path) -> str:
    if path.suffix == ".ipynb":
        return "\n".join("".join(cell["source"]) for cell in json.loads(path.read_text())["cells"])
    return path.read_text()


def course_files():
    files = sorted((REPO_ROOT / "optcourse").rglob("*.py"))
    for folder in ("lectures", "labs", "solutions"):
        files += sorted((REPO_ROOT / folder).glob("**/*.ipynb"))
    for path in files:
        if ".ipynb_checkpoints" in path.parts or "outputs" in path.parts:
            continue
        yield pytest.param(path, id=path.relative_to(REPO_ROOT).as_posix())


@pytest.mark.parametrize("path", list(course_files()))
def test_course_uses_only_the_pinned_tensorrt_api(path, pinned_api):
    missing = missing_names(names_used(source_text(path)), pinned_api)
    assert not missing, (f"{path.relative_to(REPO_ROOT)} uses TensorRT names that {pinned_bindings()} lacks: "
                         f"{missing}")


def test_the_check_finds_tensorrt_10_names(pinned_api):
    planted = ("config.set_flag(trt.BuilderFlag.FP16)\nconfig.set_flag(trt.BuilderFlag.INT8)\n"
               "config.int8_calibrator = trt.IInt8EntropyCalibrator2\n"
               "logger = trt.Logger(trt.Logger.WARNING)\nnetwork = builder.create_network(0)\n")
    assert missing_names(names_used(planted), pinned_api) == [
        "trt.BuilderFlag.FP16", "trt.BuilderFlag.INT8", "trt.IInt8EntropyCalibrator2"]
    assert "trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED" in pinned_api["names"]
    assert "trt.DataType.UINT8" in pinned_api["names"]  # INT8 is a tail of it: why no strings scan
