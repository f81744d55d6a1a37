"""INT8 calibration, the reference implementation: activation ranges and scales.

Calibration picks, for every tensor that will be stored in INT8, a clipping threshold ``T``: values in
``[-T, T]`` are mapped onto the 255 symmetric INT8 steps (``scale = T / 127``) and everything beyond is
clipped. Three ways to choose ``T`` from what a calibration set produced:

- ``absmax`` (MinMax): the largest magnitude seen. No clipping, but one outlier stretches the grid.
- ``percentile``: the p-th percentile of ``|x|`` (e.g. 99.99): clips the rare tail.
- ``entropy`` (KL): the threshold whose 128-level quantized histogram is closest, in KL divergence, to
  the original histogram of ``|x|`` (the method of TensorRT's entropy calibrator, Migacz 2017).

Conventions shared by the lab and its hidden tests: ``axis=None`` reduces over everything (per-tensor);
``axis=k`` keeps axis ``k`` (per-channel: one threshold per index of ``k``, e.g. output channels of a
conv weight with ``axis=0``). Histograms are of ``|x|`` on ``[0, absmax]``; ``edges`` has one more
entry than ``hist``.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Iterable

import numpy as np

QMAX = {8: 127, 16: 32767}


def _per_axis(x: np.ndarray, axis: int | None) -> np.ndarray:
    """|x| as a 1-D array (axis None) or a (channels, rest) matrix with ``axis`` first."""
    a = np.abs(np.asarray(x, dtype=np.float64))
    if axis is None:
        return a.reshape(-1)
    return np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)


def absmax_threshold(x: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """MinMax calibration: ``max |x|``, per tensor or per channel along ``axis``."""
    a = _per_axis(x, axis)
    return float(a.max()) if axis is None else a.max(axis=1)


def percentile_threshold(x: np.ndarray, percentile: float = 99.99, axis: int | None = None) -> np.ndarray | float:
    """The ``percentile``-th percentile of ``|x|`` (numpy's linear interpolation), per tensor or channel."""
    if not 0 < percentile <= 100:
        raise ValueError("percentile must be in (0, 100]")
    a = _per_axis(x, axis)
    return float(np.percentile(a, percentile)) if axis is None else np.percentile(a, percentile, axis=1)


def scale_from_threshold(threshold, num_bits: int = 8):
    """Symmetric scale: the real value of one integer step, ``T / (2**(bits-1) - 1)``."""
    return np.asarray(threshold, dtype=np.float64) / QMAX[num_bits] if np.ndim(threshold) else \
        float(threshold) / QMAX[num_bits]


def quantize_dequantize(x: np.ndarray, scale, num_bits: int = 8) -> np.ndarray:
    """Fake-quantize ``x``: round(x / scale), clip to the symmetric range, multiply back."""
    q = QMAX[num_bits]
    return np.clip(np.round(np.asarray(x) / scale), -q, q) * scale


def abs_histogram(x: np.ndarray, num_bins: int = 2048, max_value: float | None = None, skip_zeros: bool = True):
    """Histogram of ``|x|`` on ``[0, max_value]`` (default: ``max |x|``); returns ``(hist, edges)``.

    ``skip_zeros``: leave exact zeros out. Half of a ReLU output is exactly 0, which every grid
    represents exactly; counted, that spike dominates the KL search and drives the entropy threshold
    far too low (on the digits ResNet: 46 % accuracy instead of 99 %).
    """
    a = np.abs(np.asarray(x, dtype=np.float64)).reshape(-1)
    if skip_zeros:
        a = a[a != 0]
    top = float(max_value if max_value is not None else (a.max() if a.size else 1.0))
    top = top if top > 0 else 1.0
    hist, edges = np.histogram(np.minimum(a, top), bins=num_bins, range=(0.0, top))
    return hist.astype(np.float64), edges


def histogram_percentile_threshold(hist: np.ndarray, edges: np.ndarray, percentile: float = 99.99) -> float:
    """Percentile read off a histogram: the upper edge of the first bin where the CDF reaches it."""
    cdf = np.cumsum(hist) / max(float(np.sum(hist)), 1.0)
    idx = int(np.searchsorted(cdf, percentile / 100.0))
    return float(edges[min(idx + 1, len(edges) - 1)])


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) of two non-negative vectors, each normalised to sum 1; q's empty bins get 1e-12."""
    p = p / p.sum()
    q = q / q.sum()
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))


def entropy_kl_curve(hist: np.ndarray, num_quant_bins: int = 128) -> np.ndarray:
    """``KL(p || q)`` of every candidate cut ``i = num_quant_bins .. len(hist)`` (entry ``i - num_quant_bins``),
    as ``entropy_threshold`` defines ``p`` and ``q``; ``inf`` where a cut has no mass to compare."""
    hist = np.asarray(hist, dtype=np.float64)
    n = len(hist)
    kls = np.full(max(n - num_quant_bins + 1, 0), np.inf)
    for i in range(num_quant_bins, n + 1):
        ref = hist[:i]
        p = ref.copy()
        p[i - 1] += hist[i:].sum()
        if p.sum() == 0:
            continue
        merged = i // num_quant_bins
        group = np.minimum(np.arange(i) // merged, num_quant_bins - 1)
        nonzero = (ref > 0).astype(np.float64)
        totals = np.bincount(group, weights=ref, minlength=num_quant_bins)
        counts = np.bincount(group, weights=nonzero, minlength=num_quant_bins)
        q = np.where(nonzero > 0, totals[group] / np.maximum(counts[group], 1), 0.0)
        if q.sum() == 0:
            continue
        kls[i - num_quant_bins] = kl_divergence(p, q)
    return kls


def entropy_threshold(hist: np.ndarray, edges: np.ndarray, num_quant_bins: int = 128) -> float:
    """KL calibration (TensorRT's entropy calibrator) on a histogram of ``|x|``.

    For every candidate cut ``i`` in ``num_quant_bins .. len(hist)`` (inclusive):
      * ``p`` = the first ``i`` bins, with all counts beyond the cut added to bin ``i - 1`` (clipping);
      * ``q`` = the first ``i`` bins (without the outliers) merged into ``num_quant_bins`` groups of
        ``i // num_quant_bins`` bins (the last group takes the remainder), each group's total spread
        evenly back over the bins of the group that were non-empty;
      * keep the ``i`` with the smallest ``KL(p || q)`` (the first one on ties).
    Returns the threshold ``edges[i]``: the upper edge of the last kept bin.
    """
    n = len(hist)
    if n <= num_quant_bins:
        return float(edges[-1])
    kls = entropy_kl_curve(hist, num_quant_bins)
    best_i = n if not np.isfinite(kls).any() else num_quant_bins + int(np.argmin(kls))
    return float(edges[best_i])


def entropy_threshold_acceptable(threshold: float, hist: np.ndarray, edges: np.ndarray, num_quant_bins: int = 128,
                                 rtol: float = 1e-9) -> bool:
    """Whether ``threshold`` is a correct answer of the entropy search: the reference's cut, or another cut
    ``edges[i]`` whose KL equals the smallest KL up to ``rtol`` (an implementation that sums or takes logs in
    another order can break a near-tie the other way; both are right)."""
    reference = entropy_threshold(hist, edges, num_quant_bins)
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        return False
    if np.isclose(threshold, reference, rtol=rtol, atol=0.0):
        return True
    n = len(hist)
    if n <= num_quant_bins:
        return False
    cuts = np.flatnonzero(np.isclose(np.asarray(edges, dtype=np.float64), threshold, rtol=rtol, atol=0.0))
    kls = entropy_kl_curve(hist, num_quant_bins)
    best = float(np.min(kls))
    for i in cuts:
        if num_quant_bins <= i <= n and np.isfinite(kls[i - num_quant_bins]) and \
                kls[i - num_quant_bins] <= best + rtol * max(abs(best), 1e-12):
            return True
    return False


# ---------------------------------------------------------------------------------------------------
# collecting activation statistics from an ONNX model
# ---------------------------------------------------------------------------------------------------
ACTIVATION_OPS = {"Conv", "Relu", "Add", "Gemm", "MatMul", "GlobalAveragePool", "Flatten", "MaxPool",
                  "AveragePool", "Mul", "Sigmoid", "Clip", "Concat", "Softmax"}


@dataclasses.dataclass
class ActivationStats:
    """What the calibration set did to one tensor: range, histogram of |x|, and a random sample."""

    name: str
    min: float
    max: float
    hist: np.ndarray
    edges: np.ndarray
    sample: np.ndarray
    count: int

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max))


def activation_tensor_names(onnx_path: str | pathlib.Path, op_types: set[str] | None = None) -> list[str]:
    """Float graph inputs and outputs of nodes of ``op_types`` (default: the usual quantizable ops)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    op_types = op_types or ACTIVATION_OPS
    floats = {vi.name for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
              if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name in floats and i.name not in initializers]
    for node in model.graph.node:
        if node.op_type in op_types:
            names.extend(o for o in node.output if o in floats and o not in names)
    return names


def _augmented_session(onnx_path, names: list[str], threads: int):
    import onnx

    from optcourse.measure.bench import ort_session

    model = onnx.load(str(onnx_path))
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".onnx", delete=False) as f:
        onnx.save(model, f.name)
        session = ort_session(f.name, threads=threads, graph_optimization="disable")
    pathlib.Path(f.name).unlink(missing_ok=True)
    return session


def collect_activation_stats(onnx_path: str | pathlib.Path, batches: Iterable[dict[str, np.ndarray]],
                             tensor_names: list[str] | None = None, num_bins: int = 2048,
                             sample_size: int = 100_000, threads: int = 1, seed: int = 0,
                             progress: bool = False) -> dict[str, ActivationStats]:
    """Run the calibration ``batches`` (a list of feed dicts) through the model twice: once for each
    tensor's min/max, once for its histogram of ``|x|`` on ``[0, absmax]``; keep a random sample too."""
    batches = list(batches)
    names = tensor_names or activation_tensor_names(onnx_path)
    session = _augmented_session(onnx_path, names, threads)
    out_names = [o.name for o in session.get_outputs()]
    wanted = [out_names.index(n) for n in names]
    rng = np.random.default_rng(seed)
    per_batch = max(1, sample_size // max(len(batches), 1))
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    samples = {n: [] for n in names}
    counts = {n: 0 for n in names}
    iterator = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc="calibration pass 1/2 (ranges)")
    for feeds in iterator:
        outs = session.run(None, feeds)
        for n, k in zip(names, wanted):
            v = np.asarray(outs[k], dtype=np.float32).reshape(-1)
            lo[n], hi[n] = min(lo[n], float(v.min())), max(hi[n], float(v.max()))
            counts[n] += v.size
            samples[n].append(v[rng.integers(0, v.size, size=min(per_batch, v.size))])
    hists = {n: np.zeros(num_bins) for n in names}
    tops = {n: max(abs(lo[n]), abs(hi[n])) or 1.0 for n in names}
    if progress:
        iterator = tqdm(batches, desc="calibration pass 2/2 (histograms)")
    for feeds in iterator:
        outs = session.run(None, feeds)
        for n, k in zip(names, wanted):
            h, _ = abs_histogram(outs[k], num_bins, tops[n])
            hists[n] += h
    return {n: ActivationStats(n, lo[n], hi[n], hists[n], np.linspace(0.0, tops[n], num_bins + 1),
                               np.concatenate(samples[n]), counts[n]) for n in names}


def thresholds_from_stats(stats: dict[str, ActivationStats], method: str = "absmax",
                          percentile: float = 99.99, num_quant_bins: int = 128) -> dict[str, float]:
    """One threshold per tensor with the reference implementation of ``method``
    (``absmax``, ``percentile`` on the histogram, or ``entropy``)."""
    out = {}
    for name, st in stats.items():
        if method == "absmax":
            out[name] = st.absmax
        elif method == "percentile":
            out[name] = histogram_percentile_threshold(st.hist, st.edges, percentile)
        elif method == "entropy":
            out[name] = entropy_threshold(st.hist, st.edges, num_quant_bins)
        else:
            raise ValueError(f"unknown calibration method {method!r}: absmax, percentile or entropy")
    return out
