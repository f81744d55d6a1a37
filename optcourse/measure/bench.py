"""Benchmarking core: timing that does not lie.

What it does for you, and why:
- warm-up calls before timing (first calls pay for allocation, lazy init, JIT, caches);
- device synchronisation around every timed call on CUDA (kernels are asynchronous: without it a
  timer measures the launch, not the work), or CUDA events when asked;
- many repetitions, reported as median and percentiles with spread (a mean hides tails);
- A/B comparisons in alternating rounds (``compare``): on a small shared machine the load drifts over
  seconds, so timing A fully and then B fully attributes that drift to one side; interleaving rounds
  and taking the median of per-round ratios cancels it;
- thread pinning (``pinned_threads``): speed ratios on a 2-core machine are only stable with one
  thread per framework;
- system information captured with every result, and results saved as JSON.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import pathlib
import statistics
import time
from typing import Callable, Iterator

import numpy as np


@dataclasses.dataclass
class Stats:
    """Summary of repeated timings, in milliseconds."""

    samples_ms: list[float]

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    @property
    def median(self) -> float:
        return float(np.median(self.samples_ms))

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples_ms))

    @property
    def std(self) -> float:
        return float(np.std(self.samples_ms, ddof=1)) if self.n > 1 else 0.0

    @property
    def min(self) -> float:
        return float(np.min(self.samples_ms))

    @property
    def max(self) -> float:
        return float(np.max(self.samples_ms))

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100), linear interpolation between order statistics."""
        return float(np.percentile(self.samples_ms, q))

    @property
    def iqr(self) -> float:
        return self.percentile(75) - self.percentile(25)

    def as_dict(self) -> dict:
        return {"n": self.n, "median_ms": self.median, "mean_ms": self.mean, "std_ms": self.std,
                "min_ms": self.min, "max_ms": self.max, "p50_ms": self.percentile(50),
                "p90_ms": self.percentile(90), "p99_ms": self.percentile(99), "iqr_ms": self.iqr}

    def __str__(self) -> str:
        return (f"median {self.median:.3f} ms (IQR {self.iqr:.3f}, p90 {self.percentile(90):.3f}, "
                f"p99 {self.percentile(99):.3f}, n={self.n})")


def cuda_synchronize() -> None:
    """Wait for all queued CUDA work, if PyTorch has a GPU; a no-op otherwise."""
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def back_to_back(fn: Callable[[], object], n: int) -> Callable[[], object]:
    """A callable that calls ``fn`` ``n`` times in a row and returns the last result: one timed sample of ``n`` calls
    (``measure(inner=)``; ``compare`` takes such callables as variants)."""
    def run():
        for _ in range(n):
            out = fn()
        return out
    return run


def measure(fn: Callable[[], object], *, warmup: int = 3, repeat: int = 20, sync: bool = True,
            min_time_s: float = 0.0, max_repeat: int = 10_000, use_cuda_events: bool = False,
            inner: int = 1) -> Stats:
    """Time ``fn()`` after ``warmup`` untimed calls; return per-call ``Stats`` in ms.

    ``repeat`` calls are timed one by one; with ``min_time_s`` timing continues until that much time
    has been spent (capped by ``max_repeat``). ``sync`` synchronises CUDA before and after each call
    so the clock covers the device work. ``use_cuda_events`` times on the GPU's own clock instead.
    ``inner`` > 1: each sample times that many back-to-back calls and records their mean, so that a kernel of
    microseconds is not drowned by the synchronisation (or event) around it; the GPU then overlaps one call's
    launch with the previous call's work, as it does in a real model.
    """
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    if inner < 1:
        raise ValueError("inner must be at least 1")
    if inner > 1:
        fn = back_to_back(fn, inner)
    for _ in range(warmup):
        fn()
    if sync:
        cuda_synchronize()
    samples: list[float] = []
    if use_cuda_events:
        import torch

        start_evt, end_evt = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    spent = 0.0
    while len(samples) < repeat or (spent < min_time_s and len(samples) < max_repeat):
        if use_cuda_events:
            start_evt.record()
            fn()
            end_evt.record()
            end_evt.synchronize()
            elapsed_ms = start_evt.elapsed_time(end_evt)
        else:
            t0 = time.perf_counter()
            fn()
            if sync:
                cuda_synchronize()
            elapsed_ms = (time.perf_counter() - t0) * 1e3
        samples.append(elapsed_ms / inner)
        spent += elapsed_ms / 1e3
    return Stats(samples)


@dataclasses.dataclass
class Comparison:
    """Alternating-round timings of several variants; ratios are taken within each round."""

    stats: dict[str, Stats]
    round_medians_ms: dict[str, list[float]]

    def speedup(self, baseline: str, candidate: str) -> float:
        """Median over rounds of (baseline time / candidate time) — > 1 means candidate is faster."""
        return float(np.median(self.round_ratios(baseline, candidate)))

    def round_ratios(self, baseline: str, candidate: str) -> list[float]:
        return [b / c for b, c in zip(self.round_medians_ms[baseline], self.round_medians_ms[candidate])]

    def speedup_spread(self, baseline: str, candidate: str) -> tuple[float, float]:
        """(min, max) of the per-round ratios: how much the ratio moved during the run."""
        ratios = self.round_ratios(baseline, candidate)
        return float(min(ratios)), float(max(ratios))

    def table(self, baseline: str | None = None) -> list[dict]:
        rows = []
        for name, st in self.stats.items():
            row = {"variant": name, **{k: round(v, 4) for k, v in st.as_dict().items()}}
            if baseline:
                row["speedup"] = round(self.speedup(baseline, name), 3)
                lo, hi = self.speedup_spread(baseline, name)
                row["speedup_min"], row["speedup_max"] = round(lo, 3), round(hi, 3)
            rows.append(row)
        return rows


def compare(variants: dict[str, Callable[[], object]], *, rounds: int = 5, repeat: int = 10,
            warmup: int = 3, sync: bool = True, progress: bool = False) -> Comparison:
    """Time several variants in alternating rounds (A, B, C, A, B, C, ...) and keep per-round medians.

    Each variant is warmed up once before the first round; each round times ``repeat`` calls of each
    variant, starting from a different variant every round so none always runs first.
    """
    if not variants:
        raise ValueError("compare() needs at least one variant")
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    if sync:
        cuda_synchronize()
    samples = {n: [] for n in names}
    round_medians = {n: [] for n in names}
    iterator: Iterator[int] = range(rounds)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="alternating rounds")
    for r in iterator:
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            st = measure(variants[name], warmup=0, repeat=repeat, sync=sync)
            samples[name].extend(st.samples_ms)
            round_medians[name].append(st.median)
    return Comparison({n: Stats(samples[n]) for n in names}, round_medians)


def confidence_interval_median(samples: list[float], confidence: float = 0.95, n_boot: int = 2000,
                               seed: int = 0) -> tuple[float, float]:
    """Bootstrap confidence interval of the median."""
    rng = np.random.default_rng(seed)
    data = np.asarray(samples)
    medians = np.median(rng.choice(data, size=(n_boot, len(data)), replace=True), axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(medians, alpha)), float(np.quantile(medians, 1 - alpha))


@contextlib.contextmanager
def pinned_threads(n: int = 1):
    """Limit PyTorch's intra-op threads to ``n`` inside the block (ONNX Runtime: see ``ort_session``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


ORT_LEVELS = ("disable", "basic", "extended", "all")


def ort_optimization_level(name: str):
    """ONNX Runtime's GraphOptimizationLevel for ``disable`` / ``basic`` / ``extended`` / ``all``."""
    import onnxruntime as ort

    levels = dict(zip(ORT_LEVELS, (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)))
    if name not in levels:
        raise ValueError(f"graph_optimization must be one of {list(ORT_LEVELS)}, not {name!r}")
    return levels[name]


def ort_session(model_path: str | os.PathLike | bytes, threads: int = 1, providers: list[str] | None = None,
                graph_optimization: str = "all", exact_int8: bool | None = None):
    """An ONNX Runtime session with pinned threads and an explicit provider list (no surprises); the model is a
    path or its bytes (the grader loads a student's file once, after checking it).

    ``exact_int8``: on an x86 CPU without VNNI, ONNX Runtime's INT8 kernels add pairs of products in 16-bit lanes
    and can saturate (``hardware.int8_saturates``), so a quantized model's accuracy would depend on the CPU it runs
    on; there the session computes INT8 products in 16 bits (``session.x64quantprecision``), as a VNNI CPU or a GPU
    computes them exactly. None (the default): on such CPUs, for a model whose Q/DQ pairs are not fused yet (a
    model ONNX Runtime already optimized into ``QLinear*`` kernels, a CPU "engine", keeps the arithmetic it was built
    with). False: the fast, saturating kernels."""
    import onnxruntime as ort

    from optcourse.core.hardware import int8_saturates

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort_optimization_level(graph_optimization)
    if int8_saturates() and not _prefused_int8(model_path) if exact_int8 is None else exact_int8:
        opts.add_session_config_entry("session.x64quantprecision", "1")
    model = bytes(model_path) if isinstance(model_path, (bytes, bytearray)) else str(model_path)
    return ort.InferenceSession(model, sess_options=opts, providers=providers or ["CPUExecutionProvider"])


def _prefused_int8(model_path) -> bool:
    """Whether an ONNX model already holds ONNX Runtime's fused integer kernels (QLinearConv, QGemm, ...)."""
    import onnx

    model = (onnx.load_from_string(bytes(model_path)) if isinstance(model_path, (bytes, bytearray))
             else onnx.load(str(model_path), load_external_data=False))
    return any(node.op_type.startswith("QLinear") or node.op_type in ("QGemm", "ConvInteger", "MatMulInteger")
               for node in model.graph.node)


def system_info() -> dict:
    """Machine, software versions and time: stored with every result so numbers keep their context."""
    from optcourse.core.hardware import capabilities

    info = capabilities()
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    info["timestamp"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info["hostname"] = os.uname().nodename
    return info


def save_results(path: str | os.PathLike, results: dict, include_system: bool = True) -> pathlib.Path:
    """Write ``results`` (plus system information) as JSON; ``Stats`` objects become dicts."""
    def default(obj):
        if isinstance(obj, Stats):
            return obj.as_dict()
        if isinstance(obj, (np.floating, np.integer)):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        raise TypeError(f"cannot serialise {type(obj).__name__}")

    payload = dict(results)
    if include_system and "system" not in payload:  # not setdefault: that would probe the machine anyway
        payload["system"] = system_info()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=default))
    return path


def throughput(items: int, stats: Stats) -> float:
    """Items per second at the median latency."""
    return items / (stats.median / 1e3) if stats.median > 0 else math.inf


def geometric_mean(values: list[float]) -> float:
    return float(math.exp(statistics.fmean(math.log(v) for v in values)))
