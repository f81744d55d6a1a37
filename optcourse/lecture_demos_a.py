"""Shared demo code of lectures 1-4 (optimization overview, TensorRT, ONNX Runtime, quantization).

Small, tested helpers so the lecture notebooks stay short:
- ONNX export of the course models (digits ResNet with or without folded BatchNorm, MiniLM encoder),
  ONNX Runtime graph optimization to a file, operator histograms, profiler summaries;
- quantization arithmetic: fake quantization (symmetric/affine, per-tensor/per-channel/per-group),
  calibration thresholds (max, percentile, entropy as in TensorRT's calibrator), float round trips;
- an AWQ-style activation-aware scale search for one linear layer;
- roofline arithmetic (FLOPs, bytes, arithmetic intensity) of convolutions and matrix products.
"""
from __future__ import annotations

import collections
import json
import os
import pathlib
import warnings

import numpy as np
import torch

from optcourse.bench import ORT_LEVELS  # noqa: E402  (the one list of ORT optimization levels)


# --------------------------------------------------------------------------- ONNX export and ORT
def export_digits_onnx(path: str | os.PathLike, fold_batchnorm: bool = True, opset: int = 17,
                       model: torch.nn.Module | None = None) -> pathlib.Path:
    """Export the digits ResNet to ONNX with a dynamic batch axis (input ``x``, output ``logits``).

    ``fold_batchnorm=False`` keeps every ``BatchNormalization`` node (the graph a framework would hand
    over before any fusion), so that the effect of an optimizer's fusions can be counted.
    Uses the TorchScript exporter (``dynamo=False``): it is fast and, without constant folding,
    leaves BatchNorm alone; the dynamo exporter always simplifies.
    """
    from optcourse.models.digits import IMAGE_SIZE, load_digits_resnet

    model = model if model is not None else load_digits_resnet()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                          do_constant_folding=fold_batchnorm, dynamo=False)
    return path


class _EncoderOutput(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def export_minilm_onnx(path: str | os.PathLike, tokenizer, model, seq_len: int = 32, opset: int = 17) -> pathlib.Path:
    """Export MiniLM (inputs ``input_ids``, ``attention_mask``, ``token_type_ids``; output
    ``last_hidden_state``) with dynamic batch and sequence axes."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    enc = tokenizer(["an example sentence"] * 2, padding="max_length", max_length=seq_len, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dynamic = {n: {0: "batch", 1: "seq"} for n in names + ["last_hidden_state"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_EncoderOutput(model).eval(), tuple(enc[n] for n in names), str(path), input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    return path


def ort_level(name: str):
    from optcourse.bench import ort_optimization_level

    return ort_optimization_level(name)


def ort_optimize(src: str | os.PathLike, dst: str | os.PathLike, level: str = "all") -> pathlib.Path:
    """Let ONNX Runtime's CPU provider optimize ``src`` at ``level`` and save the result to ``dst``."""
    import onnxruntime as ort

    dst = pathlib.Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort_level(level)
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3  # the NCHWc "hardware specific" notice at level all is expected
    ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
    return dst


def op_counts(model_path: str | os.PathLike) -> collections.Counter:
    """Operator histogram of an ONNX file's main graph (``domain:op`` for non-default domains)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return collections.Counter(f"{n.domain}:{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                               for n in graph.node)


def profile_op_summary(profile_json: str | os.PathLike) -> list[dict]:
    """Aggregate an ONNX Runtime profile (``enable_profiling``) by operator type, slowest first.

    Rows: ``op``, ``calls``, ``total_us``, ``share`` (of all node kernel time).
    """
    events = json.loads(pathlib.Path(profile_json).read_text())
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for ev in events:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            totals[op][0] += 1
            totals[op][1] += float(ev.get("dur", 0))
    grand = sum(t for _, t in totals.values()) or 1.0
    rows = [{"op": op, "calls": c, "total_us": round(t, 1), "share": round(t / grand, 4)} for op, (c, t) in totals.items()]
    return sorted(rows, key=lambda r: -r["total_us"])


# --------------------------------------------------------------------------- quantization arithmetic
def _reduce_dims(x: torch.Tensor, axis: int | None):
    return tuple(d for d in range(x.dim()) if d != axis % x.dim()) if axis is not None else tuple(range(x.dim()))


def fake_quant(x: torch.Tensor, bits: int = 8, symmetric: bool = True, axis: int | None = None,
               amax: torch.Tensor | float | None = None) -> torch.Tensor:
    """Quantize ``x`` to ``bits``-bit integers and back (round to nearest, clip); returns float.

    - symmetric: scale = amax / (2^(b-1) - 1), zero point 0, range [-(2^(b-1)-1), 2^(b-1)-1] (restricted,
      as TensorRT and most INT8 kernels use);
    - affine (``symmetric=False``): scale = (max - min) / (2^b - 1), integer zero point, range [0, 2^b - 1];
    - ``axis=None``: one scale per tensor; ``axis=k``: one scale per slice along dimension k (per channel);
    - ``amax``: a calibrated clipping threshold (symmetric only) instead of the tensor's own max.
    """
    x = x.float()
    dims = _reduce_dims(x, axis)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        if amax is None:
            amax = x.abs().amax(dim=dims, keepdim=True)
        amax = torch.as_tensor(amax, dtype=torch.float32)
        scale = torch.clamp(amax, min=1e-12) / qmax
        return torch.clamp(torch.round(x / scale), -qmax, qmax) * scale
    if amax is not None:
        raise ValueError("amax applies to symmetric quantization only")
    qmax = 2 ** bits - 1
    lo = torch.clamp(x.amin(dim=dims, keepdim=True), max=0.0)  # zero must be exactly representable
    hi = torch.clamp(x.amax(dim=dims, keepdim=True), min=0.0)
    scale = torch.clamp(hi - lo, min=1e-12) / qmax
    zero_point = torch.round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zero_point, 0, qmax)
    return (q - zero_point) * scale


def quantize_groupwise(w: torch.Tensor, bits: int = 4, group_size: int = 128) -> torch.Tensor:
    """Symmetric fake quantization of a ``[out, in]`` weight with one scale per ``group_size`` inputs
    (the layout of AWQ/GPTQ INT4 kernels)."""
    out_f, in_f = w.shape
    if in_f % group_size:
        raise ValueError(f"in_features {in_f} is not a multiple of group_size {group_size}")
    g = w.float().reshape(out_f, in_f // group_size, group_size)
    return fake_quant(g, bits, symmetric=True, amax=g.abs().amax(-1, keepdim=True)).reshape(out_f, in_f)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better)."""
    ref = reference.double()
    noise = (ref - approx.double()).pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(ref.pow(2).sum() / noise))


def relative_error(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """||ref - approx|| / ||ref||."""
    ref = reference.double()
    return float((ref - approx.double()).norm() / ref.norm().clamp(min=1e-30))


def float_roundtrip(x: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    """Cast ``x / scale`` to ``dtype`` and back to float32 (times ``scale``). FP8 formats saturate."""
    y = x.float() / scale
    if dtype in (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None)):
        fmax = torch.finfo(dtype).max
        y = y.clamp(-fmax, fmax)
    return y.to(dtype).float() * scale


# --------------------------------------------------------------------------- calibration thresholds
def max_threshold(x: np.ndarray) -> float:
    """MinMax calibration: the largest magnitude seen."""
    return float(np.abs(x).max())


def percentile_threshold(x: np.ndarray, percentile: float = 99.99) -> float:
    """Percentile calibration: clip the top ``100 - percentile`` % of magnitudes."""
    return float(np.percentile(np.abs(x), percentile))


def entropy_threshold(x: np.ndarray, bits: int = 8, num_bins: int = 2048, stride: int = 1) -> float:
    """Entropy (KL-divergence) calibration, the algorithm of TensorRT's entropy calibrator.

    Histogram |x| into ``num_bins`` bins; for each candidate threshold bin i (from the number of quantized
    levels up), fold the clipped tail into the last kept bin (distribution P), merge the i bins into
    2^(b-1) levels and spread each level's mass back over its non-empty bins (Q); keep the i with the
    smallest KL(P || Q). Reference: Migacz, "8-bit Inference with TensorRT", GTC 2017.
    """
    levels = 2 ** (bits - 1)
    a = np.abs(np.asarray(x, dtype=np.float64)).ravel()
    hist, edges = np.histogram(a, bins=num_bins, range=(0.0, a.max() if a.max() > 0 else 1.0))
    hist = hist.astype(np.float64)
    best_i, best_kl = num_bins, np.inf
    for i in range(levels, num_bins + 1, stride):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()
        nonzero = hist[:i] > 0
        group = (np.arange(i) * levels) // i
        mass = np.bincount(group, weights=hist[:i], minlength=levels)
        count = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
        q = np.where(nonzero, mass[group] / np.maximum(count[group], 1), 0.0)
        if p.sum() == 0 or q.sum() == 0:
            continue
        p /= p.sum()
        q /= q.sum()
        mask = p > 0
        # q can be 0 where p > 0 (the folded last bin, if it was empty before folding): floor it
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(edges[best_i]) if best_i < len(edges) else float(edges[-1])


# --------------------------------------------------------------------------- AWQ-style scale search
def awq_search(w: torch.Tensor, x: torch.Tensor, bits: int = 4, group_size: int = 64,
               grid: int = 11) -> dict:
    """Activation-aware weight quantization for one linear layer (Lin et al. 2023, simplified).

    ``w``: ``[out, in]`` weight, ``x``: ``[tokens, in]`` calibration inputs. Scales input channel j by
    s_j = mean|x_j|^alpha (normalised), quantizes ``w * s`` group-wise and folds 1/s back into the
    input; alpha is searched on a grid in [0, 1] to minimise the output error ||x w^T - x w_q^T||.
    alpha = 0 is plain round-to-nearest (RTN). Returns ``alphas``, ``errors`` (relative output
    error per alpha), ``best_alpha``, ``rtn_error``, ``awq_error`` and ``scales``.
    """
    w = w.float()
    x = x.float().reshape(-1, w.shape[1])
    ref = x @ w.T
    act = x.abs().mean(0).clamp(min=1e-8)
    alphas = np.linspace(0.0, 1.0, grid)
    errors = []
    best = (np.inf, 0.0, torch.ones_like(act))
    for alpha in alphas:
        s = act.pow(float(alpha))
        s = s / (s.max() * s.min()).sqrt()
        w_q = quantize_groupwise(w * s, bits, group_size) / s
        err = relative_error(ref, x @ w_q.T)
        errors.append(err)
        if err < best[0]:
            best = (err, float(alpha), s)
    return {"alphas": alphas.tolist(), "errors": errors, "best_alpha": best[1], "rtn_error": errors[0],
            "awq_error": best[0], "scales": best[2]}


# --------------------------------------------------------------------------- roofline arithmetic
def conv2d_cost(conv: torch.nn.Conv2d, input_shape: tuple[int, int, int, int], bytes_per_element: int = 4) -> dict:
    """FLOPs (2 per multiply-accumulate), bytes moved (input + weight + output, each once) and
    arithmetic intensity (FLOP/byte) of a Conv2d on an NCHW input."""
    n, c, h, w = input_shape
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    ph, pw = conv.padding
    oh = (h + 2 * ph - kh) // sh + 1
    ow = (w + 2 * pw - kw) // sw + 1
    macs = n * conv.out_channels * oh * ow * (c // conv.groups) * kh * kw
    elements = n * c * h * w + conv.weight.numel() + n * conv.out_channels * oh * ow
    flops, nbytes = 2 * macs, elements * bytes_per_element
    return {"flops": flops, "bytes": nbytes, "intensity": flops / nbytes, "output_shape": (n, conv.out_channels, oh, ow)}


def matmul_cost(m: int, n: int, k: int, bytes_per_element: int = 4) -> dict:
    """FLOPs, bytes and arithmetic intensity of an (m x k) @ (k x n) product (a linear layer: m tokens)."""
    flops = 2 * m * n * k
    nbytes = (m * k + k * n + m * n) * bytes_per_element
    return {"flops": flops, "bytes": nbytes, "intensity": flops / nbytes}
