"""Where the time goes: operator profiles, GPU utilisation, and a roofline-style estimate.

- ``top_operators``: torch.profiler over a few calls of a function, operators sorted by self time
  (CPU; CUDA kernels too when the profile is ``cuda``). ``ort_top_operators`` does the same for an
  ONNX Runtime model with ORT's own profiler.
- ``nvml_status`` / ``NvmlSampler``: GPU utilisation and memory through NVML (package
  ``nvidia-ml-py``, module ``pynvml``). Without a GPU or without the package they say so plainly
  (``available=False`` and the reason) and return no numbers: nothing is invented.
- ``conv2d_cost`` / ``linear_cost`` / ``roofline``: FLOPs and minimum bytes moved by one layer, its
  arithmetic intensity, and the lower bound on its time from a machine's peak compute and memory
  bandwidth (``machine_peaks`` measures both with PyTorch, in the dtype asked for: BF16 on a GPU's tensor cores).
  Comparing the bound with the measured time says whether a layer is compute- or memory-bound and how far from the
  roof it runs. ``device_cache_bytes`` (the CPU's last-level cache, a GPU's L2) and ``streaming_out_features`` size a
  layer whose weight cannot come from that cache, so that its 1-token product really streams it from memory.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import tempfile
import threading
from typing import Callable

# ----------------------------------------------------------------------------------- torch.profiler


def top_operators(fn: Callable[[], object], *, n: int = 10, warmup: int = 2, repeat: int = 5,
                  cuda: bool | None = None, sort_by: str | None = None) -> list[dict]:
    """Profile ``repeat`` calls of ``fn`` (after ``warmup``) and return the ``n`` costliest operators.

    Each row: name, calls (per call of ``fn``), self_cpu_ms and cpu_total_ms (per call of ``fn``),
    and on CUDA self_cuda_ms; ``share`` is the operator's fraction of all self time. Sorted by self
    CUDA time on the GPU, else self CPU time (or by ``sort_by``, one of the row keys)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if cuda is None:
        cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for _ in range(repeat):
            fn()
        if cuda:
            torch.cuda.synchronize()
    rows = []
    for evt in prof.key_averages():
        row = {"name": evt.key, "calls": evt.count / repeat,
               "self_cpu_ms": evt.self_cpu_time_total / 1e3 / repeat,
               "cpu_total_ms": evt.cpu_time_total / 1e3 / repeat}
        if cuda:
            device_self = getattr(evt, "self_device_time_total", None)
            if device_self is None:
                device_self = getattr(evt, "self_cuda_time_total", 0.0)
            row["self_cuda_ms"] = device_self / 1e3 / repeat
        rows.append(row)
    key = sort_by or ("self_cuda_ms" if cuda else "self_cpu_ms")
    total = sum(r[key] for r in rows) or 1.0
    for r in rows:
        r["share"] = r[key] / total
    rows.sort(key=lambda r: r[key], reverse=True)
    return rows[:n]


def ort_top_operators(session_factory: Callable[..., object], feed: dict, *, n: int = 10, warmup: int = 2,
                      repeat: int = 5) -> list[dict]:
    """ONNX Runtime's profiler: ``session_factory(opts)`` builds a session from the given SessionOptions
    (profiling switched on); returns the ``n`` op types with the most node time per run."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = os.path.join(tmp, "ort_profile")
        sess = session_factory(opts)
        for _ in range(warmup + repeat):
            sess.run(None, feed)
        events = json.loads(pathlib.Path(sess.end_profiling()).read_text())
    # every run is profiled (warm-up too): keep the node events of the last ``repeat`` runs
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    since = runs[-repeat] if len(runs) >= repeat else 0
    per_op: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e.get("ts", 0) < since:
            continue
        op = e.get("args", {}).get("op_name", "?")
        row = per_op.setdefault(op, {"name": op, "calls": 0.0, "self_cpu_ms": 0.0})
        row["calls"] += 1 / repeat
        row["self_cpu_ms"] += e.get("dur", 0) / 1e3 / repeat
    rows = sorted(per_op.values(), key=lambda r: r["self_cpu_ms"], reverse=True)
    total = sum(r["self_cpu_ms"] for r in rows) or 1.0
    for r in rows:
        r["share"] = r["self_cpu_ms"] / total
    return rows[:n]


# ----------------------------------------------------------------------------------------- NVML
def nvml_status() -> tuple[bool, str]:
    """(available, reason): can NVML report on a GPU here? The reason is a sentence for the reader."""
    try:
        import pynvml
    except ImportError:
        return False, ("NVML is not available: the package nvidia-ml-py (module pynvml) is not installed, "
                       "so GPU utilisation and memory are not measured here")
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception as err:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return False, f"NVML is not available: {err} (no NVIDIA driver or GPU on this machine)"
    if count == 0:
        return False, "NVML is not available: the driver reports no GPU"
    return True, f"NVML reports {count} GPU(s)"


def gpu_snapshot(index: int = 0) -> dict:
    """One NVML reading of GPU ``index``: utilisation (%), memory used/total (MiB), name; or the reason."""
    ok, reason = nvml_status()
    if not ok:
        return {"available": False, "reason": reason}
    import pynvml

    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    util = pynvml.nvmlDeviceGetUtilizationRates(handle)
    mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
    name = pynvml.nvmlDeviceGetName(handle)
    return {"available": True, "name": name.decode() if isinstance(name, bytes) else name,
            "gpu_util_pct": float(util.gpu), "mem_util_pct": float(util.memory),
            "mem_used_mib": mem.used / 2**20, "mem_total_mib": mem.total / 2**20}


@dataclasses.dataclass
class NvmlSampler:
    """``with NvmlSampler() as s: work()`` then ``s.summary()``: NVML sampled every ``interval_s``
    in a background thread while the block runs. Without NVML, ``summary()`` says why."""

    index: int = 0
    interval_s: float = 0.05
    samples: list = dataclasses.field(default_factory=list)
    reason: str = ""
    available: bool = False

    def __enter__(self) -> "NvmlSampler":
        self.available, self.reason = nvml_status()
        self._stop = threading.Event()
        if self.available:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(gpu_snapshot(self.index))
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.available:
            self._thread.join(timeout=5)

    def summary(self) -> dict:
        if not self.available:
            return {"available": False, "reason": self.reason}
        if not self.samples:
            return {"available": True, "samples": 0, "reason": "the block ended before the first sample"}
        util = [s["gpu_util_pct"] for s in self.samples]
        mem = [s["mem_used_mib"] for s in self.samples]
        return {"available": True, "samples": len(self.samples), "gpu_util_mean_pct": sum(util) / len(util),
                "gpu_util_max_pct": max(util), "mem_used_max_mib": max(mem), "name": self.samples[0]["name"]}


# ------------------------------------------------------------------------------------ roofline
def conv2d_cost(in_channels: int, out_channels: int, kernel_size: int | tuple, input_hw: tuple[int, int], *,
                batch: int = 1, stride: int | tuple = 1, padding: int | tuple = 0, groups: int = 1,
                bias: bool = False, bytes_per_element: int = 4) -> dict:
    """FLOPs and minimum bytes of one Conv2d: a multiply-add counts 2 FLOPs; the bytes are reading
    the input and the weights once and writing the output once (perfect cache reuse)."""
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    h, w = input_hw
    out_h = (h + 2 * ph - kh) // sh + 1
    out_w = (w + 2 * pw - kw) // sw + 1
    macs = batch * out_channels * out_h * out_w * (in_channels // groups) * kh * kw
    flops = 2 * macs + (batch * out_channels * out_h * out_w if bias else 0)
    weights = out_channels * (in_channels // groups) * kh * kw + (out_channels if bias else 0)
    elements = batch * in_channels * h * w + weights + batch * out_channels * out_h * out_w
    return {"flops": float(flops), "bytes": float(elements * bytes_per_element),
            "intensity": flops / (elements * bytes_per_element), "output_shape": (batch, out_channels, out_h, out_w)}


def linear_cost(in_features: int, out_features: int, *, batch: int = 1, bias: bool = True,
                bytes_per_element: int = 4) -> dict:
    """FLOPs and minimum bytes of one Linear layer on ``batch`` rows."""
    flops = 2 * batch * in_features * out_features + (batch * out_features if bias else 0)
    elements = batch * in_features + in_features * out_features + (out_features if bias else 0) + batch * out_features
    return {"flops": float(flops), "bytes": float(elements * bytes_per_element),
            "intensity": flops / (elements * bytes_per_element), "output_shape": (batch, out_features)}


def layer_cost(layer, input_shape: tuple, bytes_per_element: int = 4) -> dict:
    """``conv2d_cost`` / ``linear_cost`` from a ``torch.nn.Conv2d`` or ``torch.nn.Linear`` and its input shape."""
    from torch import nn

    if isinstance(layer, nn.Conv2d):
        return conv2d_cost(layer.in_channels, layer.out_channels, layer.kernel_size, tuple(input_shape[2:]),
                           batch=input_shape[0], stride=layer.stride, padding=layer.padding, groups=layer.groups,
                           bias=layer.bias is not None, bytes_per_element=bytes_per_element)
    if isinstance(layer, nn.Linear):
        batch = 1
        for d in input_shape[:-1]:
            batch *= d
        return linear_cost(layer.in_features, layer.out_features, batch=batch, bias=layer.bias is not None,
                           bytes_per_element=bytes_per_element)
    raise TypeError(f"layer_cost handles Conv2d and Linear, not {type(layer).__name__}")


def model_layer_costs(model, example_input) -> list[dict]:
    """``layer_cost`` of every ``Conv2d`` and ``Linear`` of ``model`` at the input shape it sees when ``model`` runs on
    ``example_input`` (found with forward hooks, in call order); each row adds ``name``, ``layer`` and ``input_shape``."""
    import torch
    from torch import nn

    rows, hooks = [], []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(
                lambda mod, inp, outp, name=name: rows.append(
                    {"name": name, "layer": mod, "input_shape": tuple(inp[0].shape),
                     **layer_cost(mod, tuple(inp[0].shape))})))
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return rows


def roofline(flops: float, bytes_moved: float, peak_gflops: float, peak_gbps: float,
             measured_ms: float | None = None) -> dict:
    """The roofline bound: time >= max(flops / peak compute, bytes / peak bandwidth).

    ``ridge`` is the intensity (FLOP/byte) where the two roofs meet: below it a layer is
    memory-bound. With ``measured_ms`` also the achieved GFLOP/s and ``efficiency`` = bound / measured
    (1.0 = on the roof)."""
    compute_ms = flops / (peak_gflops * 1e9) * 1e3
    memory_ms = bytes_moved / (peak_gbps * 1e9) * 1e3
    out = {"flops": flops, "bytes": bytes_moved, "intensity": flops / bytes_moved,
           "ridge": peak_gflops / peak_gbps, "compute_ms": compute_ms, "memory_ms": memory_ms,
           "bound_ms": max(compute_ms, memory_ms), "bound": "compute" if compute_ms >= memory_ms else "memory",
           "peak_gflops": peak_gflops, "peak_gbps": peak_gbps}
    if measured_ms is not None:
        out["measured_ms"] = measured_ms
        out["achieved_gflops"] = flops / (measured_ms / 1e3) / 1e9
        out["efficiency"] = out["bound_ms"] / measured_ms
    return out


def machine_peaks(device: str = "cpu", *, matmul_n: int | None = None, copy_mib: int = 64,
                  repeat: int = 5, dtype=None) -> dict:
    """Measured (not datasheet) peaks with the current torch thread setting: matmul GFLOP/s in ``dtype`` (default
    float32; ``torch.bfloat16`` on a GPU measures its tensor cores) and copy bandwidth GB/s (read + write, float32
    elements whatever ``dtype``). Best of ``repeat``: a roof is what the machine *can* do."""
    import torch

    from optcourse.measure.bench import measure

    dtype = dtype or torch.float32
    n = matmul_n or (4096 if device == "cuda" else 512)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    mm = measure(lambda: torch.mm(a, b), warmup=2, repeat=repeat)
    del a, b
    src = torch.empty(copy_mib * 2**20 // 4, device=device).normal_()
    dst = torch.empty_like(src)
    cp = measure(lambda: dst.copy_(src), warmup=2, repeat=repeat)
    return {"device": device, "peak_gflops": 2 * n**3 / (mm.min / 1e3) / 1e9,
            "peak_gbps": 2 * src.numel() * 4 / (cp.min / 1e3) / 1e9, "matmul_n": n, "copy_mib": copy_mib,
            "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads()}


def device_cache_bytes(device: str = "cpu") -> int | None:
    """The cache in front of ``device``'s memory: a CUDA GPU's L2 (``torch.cuda.get_device_properties``), else the
    CPU's last-level cache (``hardware.last_level_cache_bytes``); None where neither says."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.get_device_properties(torch.device(device)).L2_cache_size) or None
    from optcourse.core.hardware import last_level_cache_bytes

    return last_level_cache_bytes()


def streaming_out_features(in_features: int, cache_bytes: int, *, bytes_per_element: int = 4, factor: int = 3,
                           multiple: int = 256, minimum: int = 3072) -> int:
    """Output features of a ``Linear(in_features, n)`` whose weight is at least ``factor`` times ``cache_bytes``: a
    multiple of ``multiple``, never under ``minimum``. A 1-token product with such a weight streams it from memory
    (a weight the cache holds would land above the memory roof)."""
    if min(in_features, cache_bytes, bytes_per_element, factor, multiple) < 1:
        raise ValueError("in_features, cache_bytes, bytes_per_element, factor and multiple must be positive")
    row = in_features * bytes_per_element * multiple
    return max(minimum, -(-factor * cache_bytes // row) * multiple)


def plot_roofline(points: list[dict], peak_gflops: float, peak_gbps: float, ax=None):
    """Log-log roofline with one dot per measured layer (``roofline(..., measured_ms=...)`` rows with a
    ``label``). Returns the matplotlib axes."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    lo = min([p["intensity"] for p in points] + [peak_gflops / peak_gbps]) / 4
    hi = max([p["intensity"] for p in points] + [peak_gflops / peak_gbps]) * 4
    x = np.logspace(np.log10(lo), np.log10(hi), 100)
    ax.loglog(x, np.minimum(peak_gflops, peak_gbps * x), "k-", label="roof (measured peaks)")
    for p in points:
        ax.loglog([p["intensity"]], [p["achieved_gflops"]], "o", label=p.get("label", "layer"))
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("GFLOP/s")
    ax.legend(fontsize=8)
    return ax


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))

