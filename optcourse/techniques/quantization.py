"""Quantization from scratch: the reference implementations of Lab 02 (``lab02_quantization``).

The lab's hidden tests compare a student's functions with these, and the notebook reuses them where
the student is not asked to write the piece (so one wrong answer does not spoil the later tasks).

Conventions (one for the whole course):
- *affine* (asymmetric) quantization maps ``[min(x, 0), max(x, 0)]`` onto the unsigned range
  ``[0, 2^b - 1]``: ``q = clamp(round(x / scale) + zero_point)``, ``x ~ (q - zero_point) * scale``,
  ``zero_point = qmin - round(min / scale)`` (so the real value 0 is exactly representable);
- *symmetric* quantization maps ``[-max|x|, max|x|]`` onto ``[-(2^(b-1) - 1), 2^(b-1) - 1]``
  with zero point 0 (the restricted range: -128 is not used, as in TensorRT and ONNX Runtime);
- *per-channel*: one scale (and zero point) per slice along ``axis`` (axis 0 of a Conv2d or Linear
  weight is the output channel), returned as 1-D tensors of that axis' length;
- weight-only *group* quantization (INT4 for LLMs): each row of a ``(out, in)`` weight is cut into
  contiguous groups of ``group_size`` input channels, each group with its own scale and zero point.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

# ---------------------------------------------------------------------------------------------
# 1. quantization arithmetic


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-bit code: signed is restricted (symmetric) ``[-(2^(b-1)-1), 2^(b-1)-1]``."""
    if signed:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def _min_max(x: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if axis is None:
        return x.min(), x.max()
    flat = x.transpose(0, axis).reshape(x.shape[axis], -1)
    return flat.min(1).values, flat.max(1).values


def _view(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reshape per-channel parameters ``t`` so that they broadcast along ``axis`` of ``x``."""
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def affine_qparams(x: torch.Tensor, bits: int = 8, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (int64) of asymmetric quantization onto ``[0, 2^bits - 1]``."""
    qmin, qmax = qrange(bits, signed=False)
    lo, hi = _min_max(x.detach().float(), axis)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = ((hi - lo) / (qmax - qmin)).clamp(min=1e-8)
    zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int64)
    return scale, zero_point


def symmetric_qparams(x: torch.Tensor, bits: int = 8, axis: int | None = None) -> torch.Tensor:
    """Scale of symmetric quantization onto ``[-(2^(b-1)-1), 2^(b-1)-1]`` (zero point 0)."""
    _, qmax = qrange(bits, signed=True)
    lo, hi = _min_max(x.detach().float(), axis)
    return (torch.maximum(lo.abs(), hi.abs()) / qmax).clamp(min=1e-8)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int, qmin: int, qmax: int,
             axis: int | None = None) -> torch.Tensor:
    """Integer codes (int32): ``clamp(round(x / scale) + zero_point, qmin, qmax)``."""
    scale = _view(torch.as_tensor(scale, dtype=torch.float32), x, axis)
    zero_point = _view(torch.as_tensor(zero_point), x, axis)
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int,
               axis: int | None = None) -> torch.Tensor:
    """Real values of integer codes: ``(q - zero_point) * scale``."""
    scale = _view(torch.as_tensor(scale, dtype=torch.float32), q, axis)
    zero_point = _view(torch.as_tensor(zero_point), q, axis)
    return (q.to(torch.float32) - zero_point) * scale


def fake_quantize(x: torch.Tensor, bits: int = 8, symmetric: bool = True, axis: int | None = None) -> torch.Tensor:
    """Quantize and dequantize ``x`` with parameters from its own range (no gradient trick)."""
    if symmetric:
        qmin, qmax = qrange(bits, signed=True)
        scale, zero_point = symmetric_qparams(x, bits, axis), torch.zeros((), dtype=torch.int64)
    else:
        qmin, qmax = qrange(bits, signed=False)
        scale, zero_point = affine_qparams(x, bits, axis)
    return dequantize(quantize(x, scale, zero_point, qmin, qmax, axis), scale, zero_point, axis)


class FakeQuantSTE(torch.autograd.Function):
    """Fake quantization whose backward is the (clipped) straight-through estimator.

    ``forward``: ``(clamp(round(x / s) + z, qmin, qmax) - z) * s``. Rounding has zero derivative
    almost everywhere, so autograd through it would stop all learning; the STE treats rounding as the
    identity and passes the gradient through unchanged where ``x`` is inside the representable range
    (and zero where it was clipped). ``scale`` and ``zero_point`` must already broadcast against ``x``.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        codes = torch.round(x / scale) + zero_point
        ctx.save_for_backward((codes >= qmin) & (codes <= qmax))
        return (torch.clamp(codes, qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad_output):
        (inside,) = ctx.saved_tensors
        return grad_output * inside, None, None, None, None


def fake_quant_ste(x, scale, zero_point, qmin, qmax):
    return FakeQuantSTE.apply(x, scale, zero_point, qmin, qmax)


# ---------------------------------------------------------------------------------------------
# 2. simulated quantization of a CNN (PTQ and QAT share one wrapper)


class QuantWrapper(nn.Module):
    """Wraps a Conv2d or Linear: fake-quantized weights (symmetric, per output channel or per tensor)
    and, when ``a_bits`` is set, fake-quantized inputs (affine per tensor, range from calibration).

    ``fake_quant(x, scale, zero_point, qmin, qmax)`` is the function used for both, by default the
    straight-through estimator, so the same module serves PTQ (evaluate) and QAT (train).
    """

    def __init__(self, module: nn.Module, w_bits: int | None = 8, a_bits: int | None = 8,
                 per_channel: bool = True, fake_quant: Callable = fake_quant_ste):
        super().__init__()
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"QuantWrapper wraps Conv2d or Linear, not {type(module).__name__}")
        self.module, self.w_bits, self.a_bits = module, w_bits, a_bits
        self.per_channel, self.fake_quant = per_channel, fake_quant
        self.calibrating = False
        self.register_buffer("act_min", torch.tensor(float("inf")))
        self.register_buffer("act_max", torch.tensor(float("-inf")))

    def quantized_weight(self) -> torch.Tensor:
        w = self.module.weight
        if not self.w_bits:
            return w
        qmin, qmax = qrange(self.w_bits, signed=True)
        axis = 0 if self.per_channel else None
        scale = _view(symmetric_qparams(w, self.w_bits, axis), w, axis)
        return self.fake_quant(w, scale, torch.zeros_like(scale), qmin, qmax)

    def forward(self, x):
        if self.calibrating:
            self.act_min = torch.minimum(self.act_min, x.detach().min())
            self.act_max = torch.maximum(self.act_max, x.detach().max())
        elif self.a_bits and torch.isfinite(self.act_min):
            qmin, qmax = qrange(self.a_bits, signed=False)
            lo, hi = self.act_min.clamp(max=0), self.act_max.clamp(min=0)
            scale = ((hi - lo) / (qmax - qmin)).clamp(min=1e-8)
            zero_point = qmin - torch.round(lo / scale)
            x = self.fake_quant(x, scale, zero_point, qmin, qmax)
        w = self.quantized_weight()
        if isinstance(self.module, nn.Conv2d):
            return self.module._conv_forward(x, w, self.module.bias)
        return F.linear(x, w, self.module.bias)


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the Conv2d and Linear modules of ``model`` in definition order."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def quantize_model(model: nn.Module, w_bits: int | None = 8, a_bits: int | None = 8,
                   calib_x: torch.Tensor | None = None, layer_bits: dict[str, int | None] | None = None,
                   per_channel: bool = True, fake_quant: Callable = fake_quant_ste,
                   batch_size: int = 256) -> nn.Module:
    """A copy of ``model`` with every Conv2d/Linear wrapped in ``QuantWrapper`` (simulated quantization).

    ``layer_bits`` overrides the weight bits of named layers (``None``: keep that layer in float) —
    that is how mixed precision is expressed. With ``calib_x`` the activation ranges are calibrated
    (min/max over the calibration batch) before the copy is returned in eval mode.
    """
    qmodel = copy.deepcopy(model).eval()
    layer_bits = layer_bits or {}
    for name in quantizable_layers(qmodel):
        bits = layer_bits.get(name, w_bits)
        if bits is None and name in layer_bits:
            continue
        _set_module(qmodel, name, QuantWrapper(qmodel.get_submodule(name), bits, a_bits, per_channel, fake_quant))
    if calib_x is not None:
        calibrate(qmodel, calib_x, batch_size)
    return qmodel


def wrappers(model: nn.Module) -> list[QuantWrapper]:
    return [m for m in model.modules() if isinstance(m, QuantWrapper)]


@torch.no_grad()
def calibrate(qmodel: nn.Module, calib_x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Record each wrapper's input range (min/max) over ``calib_x``."""
    qmodel.eval()
    for w in wrappers(qmodel):
        w.act_min.fill_(float("inf"))
        w.act_max.fill_(float("-inf"))
        w.calibrating = True
    try:
        for i in range(0, len(calib_x), batch_size):
            qmodel(calib_x[i:i + batch_size])
    finally:
        for w in wrappers(qmodel):
            w.calibrating = False
    return qmodel


def qat_finetune(qmodel: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 1, lr: float = 1e-4,
                 batch_size: int = 64, seed: int = 0, progress: bool = True) -> list[float]:
    """Quantization-aware fine-tuning of a ``quantize_model`` copy: gradients flow through the fake
    quantizers (STE); BatchNorm statistics and activation ranges stay frozen (a common QAT recipe for
    fine-tuning from a trained model). Returns the loss of every step."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in qmodel.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    qmodel.eval()  # frozen BN statistics; the fake quantizers behave the same in train and eval
    for _ in tqdm(range(epochs), desc="QAT", disable=not progress):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            batch = perm[i:i + batch_size]
            loss = F.cross_entropy(qmodel(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


def sensitivity_scan(model: nn.Module, evaluate: Callable[[nn.Module], float], bits: int,
                     layers: Iterable[str] | None = None, a_bits: int | None = None,
                     calib_x: torch.Tensor | None = None) -> dict[str, float]:
    """Quantize one layer at a time (weights at ``bits``; all other layers stay float) and return
    ``{layer: evaluate(model)}`` — the layers whose score falls most are the sensitive ones."""
    layers = list(layers) if layers is not None else quantizable_layers(model)
    scores = {}
    for name in layers:
        plan = {other: None for other in quantizable_layers(model) if other != name}
        plan[name] = bits
        scores[name] = float(evaluate(quantize_model(model, bits, a_bits, calib_x, layer_bits=plan)))
    return scores


def mixed_precision_plan(scores: dict[str, float], keep: int, low_bits: int,
                         high_bits: int | None = 8) -> dict[str, int | None]:
    """Per-layer bits: the ``keep`` layers with the lowest score stay at ``high_bits``, the rest get ``low_bits``."""
    ranked = sorted(scores, key=lambda name: scores[name])
    return {name: (high_bits if i < keep else low_bits) for i, name in enumerate(ranked)}


# ---------------------------------------------------------------------------------------------
# 3. weight-only group quantization for LLM Linear layers (INT4), with an AWQ-style scale search


def quantize_groups(w: torch.Tensor, bits: int = 4, group_size: int = 64):
    """Asymmetric per-group quantization of a ``(out, in)`` weight along its input dimension.

    Each group's range ``[min(g, 0), max(g, 0)]`` maps onto ``[0, 2^bits - 1]`` (like ``affine_qparams``).

    Returns ``(q, scales, zeros)``: ``q`` uint8 codes in ``[0, 2^bits - 1]`` with the shape of ``w``,
    ``scales`` and ``zeros`` of shape ``(out, in // group_size)``.
    """
    out_features, in_features = w.shape
    if in_features % group_size:
        raise ValueError(f"in_features {in_features} is not a multiple of group_size {group_size}")
    qmax = 2 ** bits - 1
    g = w.detach().float().reshape(out_features, in_features // group_size, group_size)
    lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)  # zero stays representable (as GPTQ)
    scales = ((hi - lo) / qmax).clamp(min=1e-8)
    zeros = torch.round(-lo / scales).clamp(0, qmax)
    q = torch.clamp(torch.round(g / scales[..., None]) + zeros[..., None], 0, qmax)
    return q.reshape(out_features, in_features).to(torch.uint8), scales, zeros


def dequantize_groups(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """Inverse of ``quantize_groups``: a float32 ``(out, in)`` weight."""
    out_features, n_groups = scales.shape
    g = q.float().reshape(out_features, n_groups, -1)
    return ((g - zeros[..., None].float()) * scales[..., None].float()).reshape(out_features, -1)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte (low nibble first) along the last dimension (which must be even)."""
    q = q.to(torch.uint8)
    return (q[..., 0::2] & 0xF) | ((q[..., 1::2] & 0xF) << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    low, high = packed & 0xF, packed >> 4
    return torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], -1)


class WQLinear(nn.Module):
    """A weight-only quantized Linear: packed INT4 codes + fp16 scales/zeros per group, dequantized on
    the fly (real storage, simulated compute). ``input_scale`` is the AWQ per-channel scale ``s``: the
    stored weight is ``Q(W * s)`` and the input is divided by ``s`` (a real kernel folds ``1/s`` into
    the previous RMSNorm)."""

    def __init__(self, linear: nn.Linear, bits: int = 4, group_size: int = 64,
                 input_scale: torch.Tensor | None = None):
        super().__init__()
        if bits != 4:
            raise ValueError("WQLinear stores 4-bit codes")
        w = linear.weight.detach().float()
        if input_scale is not None:
            w = w * input_scale[None, :]
        q, scales, zeros = quantize_groups(w, bits, group_size)
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        self.register_buffer("qweight", pack_int4(q))
        self.register_buffer("scales", scales.half())
        self.register_buffer("zeros", zeros.to(torch.uint8))
        self.register_buffer("input_scale", None if input_scale is None else input_scale.float())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def weight_float(self) -> torch.Tensor:
        return dequantize_groups(unpack_int4(self.qweight), self.scales, self.zeros)

    def forward(self, x):
        if self.input_scale is not None:
            x = x / self.input_scale.to(x.dtype)
        return F.linear(x, self.weight_float().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int4, group_size={self.group_size}"


def awq_search_scale(w: torch.Tensor, x: torch.Tensor, bits: int = 4, group_size: int = 64,
                     n_grid: int = 20) -> tuple[torch.Tensor, float, list[float]]:
    """Activation-aware scale search (AWQ, Lin et al. 2023) for one Linear.

    ``x``: calibration inputs ``(n, in)``. For ``alpha`` on a grid in ``[0, 1)``, the per-input-channel
    scale is ``s = mean|x|^alpha`` (normalised by ``sqrt(max(s) * min(s))``); the candidate weight is
    ``Q(W * s) / s``; the error is the mean squared difference of the layer outputs on ``x``.
    ``alpha = 0`` is plain round-to-nearest, so the result is never worse than RTN on ``x``.
    Returns ``(s, best_alpha, errors)``.
    """
    w, x = w.detach().float(), x.detach().float()
    x_mean = x.abs().mean(0).clamp(min=1e-5)
    ref = x @ w.T
    best = (None, 0.0, math.inf)
    errors = []
    for i in range(n_grid):
        alpha = i / n_grid
        s = x_mean.pow(alpha)
        s = s / torch.sqrt(s.max() * s.min())
        w_q = dequantize_groups(*quantize_groups(w * s[None, :], bits, group_size)) / s[None, :]
        err = ((x @ w_q.T - ref) ** 2).mean().item()
        errors.append(err)
        if err < best[2]:
            best = (s, alpha, err)
    return best[0], best[1], errors


def llama_linear_names(model: nn.Module) -> list[str]:
    """The Linear layers inside the decoder blocks (attention and MLP projections; not the lm_head)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in f".{n}"]


@torch.no_grad()
def collect_linear_inputs(model: nn.Module, input_ids: torch.Tensor, names: Iterable[str],
                          seq_len: int = 512, max_rows: int = 4096, seed: int = 0) -> dict[str, torch.Tensor]:
    """Run ``input_ids`` (1-D) through the model in windows and keep up to ``max_rows`` input rows per layer."""
    names = list(names)
    store = {n: [] for n in names}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda mod, inp, out, n=n: store[n].append(inp[0].detach().reshape(-1, inp[0].shape[-1]).float()))
        for n in names]
    try:
        for start in range(0, len(input_ids) - 1, seq_len):
            chunk = input_ids[start:start + seq_len]
            if len(chunk) > 1:
                model(chunk[None])
    finally:
        for h in hooks:
            h.remove()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for n in names:
        rows = torch.cat(store[n])
        if len(rows) > max_rows:
            rows = rows[torch.randperm(len(rows), generator=gen)[:max_rows]]
        out[n] = rows
    return out


def quantize_llama_weight_only(model: nn.Module, group_size: int = 64,
                               input_scales: dict[str, torch.Tensor] | None = None,
                               names: Iterable[str] | None = None) -> nn.Module:
    """A copy of ``model`` whose decoder Linear layers are ``WQLinear`` (INT4, groups of ``group_size``)."""
    qmodel = copy.deepcopy(model)
    input_scales = input_scales or {}
    for name in (list(names) if names is not None else llama_linear_names(qmodel)):
        _set_module(qmodel, name, WQLinear(qmodel.get_submodule(name), 4, group_size, input_scales.get(name)))
    return qmodel.eval()


def gptq_hessian(x: torch.Tensor) -> torch.Tensor:
    """The Hessian ``H = 2 XᵀX / n`` of a Linear's reconstruction loss ``||XWᵀ - XŴᵀ||² / n`` with respect to
    each row of ``W``, from calibration inputs ``x`` of shape ``(n, in)`` (float32)."""
    x = x.detach().reshape(-1, x.shape[-1]).float()
    return 2.0 * (x.T @ x) / max(len(x), 1)


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int = 64,
                  damp: float = 0.01, block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ (Frantar et al. 2022) of a ``(out, in)`` Linear weight, in ``quantize_groups``' format.

    Columns (input channels) are quantized one at a time, left to right. After column ``j`` is rounded, its
    error ``e = (w_j - q_j) / [H⁻¹]_jj`` is spread over the columns not yet quantized, ``W[:, k] -= e [H⁻¹]_jk``
    (the Optimal Brain Quantization update), with ``H⁻¹`` taken as the upper Cholesky factor of the inverse of
    the damped Hessian (``H + damp · mean(diag H) · I``); updates are applied lazily per block of
    ``block_size`` columns. Each group of ``group_size`` columns gets its scale and zero point (the asymmetric
    grid of ``quantize_groups``) from the *updated* weights when its first column is reached. Input channels
    that never saw a non-zero calibration value (``H_jj = 0``) are set to zero, as in the paper.

    With a diagonal Hessian nothing is spread and the result is round-to-nearest (``quantize_groups``).
    Returns ``(q, scales, zeros)``: decode with ``dequantize_groups``.
    """
    out_features, in_features = w.shape
    if in_features % group_size:
        raise ValueError(f"in_features {in_features} is not a multiple of group_size {group_size}")
    if hessian.shape != (in_features, in_features):
        raise ValueError(f"hessian has shape {tuple(hessian.shape)}, expected ({in_features}, {in_features})")
    block_size = max(group_size, block_size // group_size * group_size)  # groups never straddle blocks
    qmax = 2 ** bits - 1
    W = w.detach().double().clone()
    H = hessian.detach().double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(in_features, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    n_groups = in_features // group_size
    q = torch.zeros(out_features, in_features, dtype=torch.uint8)
    scales = torch.zeros(out_features, n_groups, dtype=torch.float64)
    zeros = torch.zeros(out_features, n_groups, dtype=torch.float64)
    for i1 in range(0, in_features, block_size):
        i2 = min(i1 + block_size, in_features)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if col % group_size == 0:  # the group's grid from the weights as they are now
                g = W1[:, i:i + group_size]
                lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
                s = ((hi - lo) / qmax).clamp(min=1e-8)
                scales[:, col // group_size], zeros[:, col // group_size] = s, torch.round(-lo / s).clamp(0, qmax)
            s, z = scales[:, col // group_size], zeros[:, col // group_size]
            code = torch.clamp(torch.round(W1[:, i] / s) + z, 0, qmax)
            q[:, col] = code.to(torch.uint8)
            err = (W1[:, i] - (code - z) * s) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return q, scales.float(), zeros.float()


@torch.no_grad()
def gptq_llama(model: nn.Module, input_ids: torch.Tensor, bits: int = 4, group_size: int = 64,
               names: Iterable[str] | None = None, seq_len: int = 256, damp: float = 0.01) -> nn.Module:
    """A copy of a Llama whose decoder Linear layers hold GPTQ-quantized weights (dequantized to float).

    Sequential over decoder blocks, as in the paper: the Hessians of block ``l``'s layers come from the
    calibration tokens ``input_ids`` (1-D) run through the copy whose blocks ``< l`` are already quantized.
    """
    qmodel = copy.deepcopy(model).eval()
    names = list(names) if names is not None else llama_linear_names(qmodel)
    blocks: dict[str, list[str]] = {}
    for n in names:
        blocks.setdefault(n.split(".mlp.")[0].split(".self_attn.")[0], []).append(n)
    for block_names in blocks.values():
        inputs = collect_linear_inputs(qmodel, input_ids, block_names, seq_len=seq_len, max_rows=10 ** 9)
        for n in block_names:
            layer = qmodel.get_submodule(n)
            codes = gptq_quantize(layer.weight.float(), gptq_hessian(inputs[n]), bits, group_size, damp)
            layer.weight.copy_(dequantize_groups(*codes).to(layer.weight.dtype))
    return qmodel


def quantize_llama_rtn(model: nn.Module, bits: int = 4, group_size: int = 64,
                       names: Iterable[str] | None = None) -> nn.Module:
    """A copy of a Llama whose decoder Linear layers hold round-to-nearest group-quantized weights (float)."""
    qmodel = copy.deepcopy(model).eval()
    with torch.no_grad():
        for n in (list(names) if names is not None else llama_linear_names(qmodel)):
            layer = qmodel.get_submodule(n)
            w_q = dequantize_groups(*quantize_groups(layer.weight.float(), bits, group_size))
            layer.weight.copy_(w_q.to(layer.weight.dtype))
    return qmodel


def module_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t is None or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


# ---------------------------------------------------------------------------------------------
# 4. measuring quantization error, and float formats


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



def cosine_similarity_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of matching rows of ``a`` and ``b``."""
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    return F.cosine_similarity(a, b, dim=-1)


def dtype_roundtrip_error(x: torch.Tensor, dtype: torch.dtype) -> dict[str, float]:
    """Cast ``x`` to ``dtype`` and back: max relative error over finite results, and overflow count."""
    y = x.float().to(dtype).float()
    finite = torch.isfinite(y)
    rel = ((y - x).abs() / x.abs().clamp(min=1e-30))[finite]
    return {"max_rel_error": float(rel.max()) if rel.numel() else math.inf,
            "overflow": int((~finite).sum())}


def round_through(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A float32 copy of ``model`` whose weights, input and every leaf module's output are rounded to ``dtype``:
    the numbers a ``dtype`` network computes with, the arithmetic done in float32 (as tensor cores accumulate).
    For a CPU without ``dtype`` kernels (FP16 convolutions run ~27x slower than FP32 on the course's CPU)."""
    import copy

    def rnd(t):
        return t.to(dtype).to(t.dtype) if torch.is_tensor(t) and t.is_floating_point() else t

    model = copy.deepcopy(model).float()
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.copy_(rnd(t))
    for module in model.modules():
        if not any(module.children()):
            module.register_forward_hook(lambda _m, _inp, out: rnd(out))
    model.register_forward_pre_hook(lambda _m, inp: tuple(rnd(t) for t in inp))
    return model


# ---------------------------------------------------------------------------------------- FP8 GEMM (W8A8 in FP8)
def to_fp8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor scaled FP8 E4M3: ``(t / scale)`` cast to ``float8_e4m3fn`` with ``scale = amax / 448`` (the format's
    maximum), so the tensor's range sits just under it; returns ``(values, scale)`` (scale a float32 scalar)."""
    fmax = torch.finfo(torch.float8_e4m3fn).max
    scale = (t.detach().abs().amax().float() / fmax).clamp(min=1e-12)
    return (t.float() / scale).clamp(-fmax, fmax).to(torch.float8_e4m3fn), scale


def fp8_matmul(a_fp8: torch.Tensor, a_scale: torch.Tensor, b_fp8: torch.Tensor, b_scale: torch.Tensor,
               out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``a @ b.T`` from FP8 operands (``to_fp8``), accumulated in FP32 and written in ``out_dtype``:
    ``torch._scaled_mm``, the FP8 tensor-core GEMM on Hopper/Ada/Blackwell (a reference kernel on a CPU).
    ``a`` is (m, k), ``b`` is (n, k) as a linear layer's weight; on CUDA m, n, k are multiples of 16."""
    return torch._scaled_mm(a_fp8, b_fp8.t(), scale_a=a_scale, scale_b=b_scale, out_dtype=out_dtype)


def compare_fp8_gemm(m: int, n: int, k: int, device: str = "cpu", rounds: int = 3, repeat: int = 5,
                     seed: int = 0) -> dict:
    """BF16 GEMM vs FP8 GEMM on random (m, k) x (n, k) operands, timed side by side (``bench.compare``, operands
    quantized once beforehand, as weights are offline and activations by the previous kernel), and the error of each
    against an FP32 product: ``{"bf16_ms", "fp8_ms", "fp8_speedup", "bf16_rel_error", "fp8_rel_error",
    "bf16_tflops", "fp8_tflops"}``."""
    from optcourse.measure import bench

    g = torch.Generator(device="cpu").manual_seed(seed)
    a32, b32 = torch.randn(m, k, generator=g).to(device), torch.randn(n, k, generator=g).to(device)
    a16, b16 = a32.to(torch.bfloat16), b32.to(torch.bfloat16)
    (a8, sa), (b8, sb) = to_fp8(a32), to_fp8(b32)
    reference = a32 @ b32.T
    cmp = bench.compare({"bf16": lambda: a16 @ b16.T, "fp8": lambda: fp8_matmul(a8, sa, b8, sb)},
                        rounds=rounds, repeat=repeat, warmup=2)
    flops = 2 * m * n * k
    bf16_ms, fp8_ms = cmp.stats["bf16"].median, cmp.stats["fp8"].median
    return {"bf16_ms": bf16_ms, "fp8_ms": fp8_ms, "fp8_speedup": cmp.speedup("bf16", "fp8"),
            "bf16_rel_error": relative_error(reference, (a16 @ b16.T).float()),
            "fp8_rel_error": relative_error(reference, fp8_matmul(a8, sa, b8, sb).float()),
            "bf16_tflops": flops / bf16_ms / 1e9, "fp8_tflops": flops / fp8_ms / 1e9}
