"""Model compression, minimal and tested: low-rank adapters and 4-bit NormalFloat.

- ``LoRALinear`` / ``apply_lora`` / ``merge_lora``: low-rank adapters on frozen linear layers (Hu et al., 2021).
- ``nf4_codebook`` / ``quantize_nf4`` / ``dequantize_nf4``: QLoRA's 4-bit NormalFloat with blockwise
  absmax scaling and optional double quantization of the scales (Dettmers et al., 2023).
- pruning (unstructured, ``two_four_mask``, channels), distillation; ``compare_semi_structured_mlp``: 2:4 sparse
  kernels and channel pruning against dense on a transformer MLP of a real shape, timed on a GPU.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import torch
from torch import nn

# --------------------------------------------------------------------------------------- LoRA


class LoRALinear(nn.Module):
    """``y = W x + (alpha / r) * B A x`` with ``W`` frozen; ``B`` starts at zero so training starts at ``W``."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0):
        super().__init__()
        if r < 1:
            raise ValueError("LoRA rank r must be >= 1")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and peft) initialise A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the adapter folded in: no inference overhead after merging."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        dtype=self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scaling * self.lora_B @ self.lora_A)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def apply_lora(model: nn.Module, target_names=("q_proj", "v_proj"), r: int = 8, alpha: float = 16.0) -> list[str]:
    """Freeze ``model`` and wrap every ``nn.Linear`` whose attribute name is in ``target_names``.

    Returns the qualified names of the wrapped layers. Only the LoRA matrices stay trainable.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in target_names and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, r=r, alpha=alpha))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    return wrapped


def merge_lora(model: nn.Module) -> int:
    """Replace every ``LoRALinear`` in ``model`` by its merged ``nn.Linear``; returns how many."""
    count = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
                count += 1
    return count


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------- NF4

# The 16 NF4 levels as published in bitsandbytes (functional.py, ``get_4bit_type("nf4")``).
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0])


def nf4_codebook(offset: float = 0.9677083) -> torch.Tensor:
    """Construct NF4 from normal quantiles (QLoRA, Sec. 3): 8 positive, 7 negative levels and an exact 0.

    Asymmetric on purpose: 16 levels cannot be symmetric around an exact zero. Matches ``NF4_LEVELS``.
    """
    from scipy.stats import norm

    pos = norm.ppf(torch.linspace(offset, 0.5, 9)[:-1].double().numpy()).tolist()
    neg = (-norm.ppf(torch.linspace(offset, 0.5, 8)[:-1].double().numpy())).tolist()
    values = torch.tensor(sorted(pos + [0.0] + neg), dtype=torch.float64)
    return (values / values.abs().max()).float()


def int4_codebook() -> torch.Tensor:
    """Uniform symmetric 4-bit levels (-7..7)/7 plus -8/7 unused: the INT4-absmax baseline."""
    return torch.arange(-7, 8, dtype=torch.float32) / 7


@dataclasses.dataclass
class QuantizedTensor:
    codes: torch.Tensor            # uint8 indices into the codebook, one per weight
    scales: torch.Tensor           # fp32 absmax per block (or its dequantized value after double quant)
    shape: tuple
    block_size: int
    codebook: torch.Tensor
    scale_bits: float              # storage bits per scale (32, or ~8 + overhead with double quant)

    @property
    def bits_per_parameter(self) -> float:
        # codes are stored in whole bits: a 15-level codebook (INT4 absmax) still takes 4 bits per weight
        return math.ceil(math.log2(len(self.codebook))) + self.scale_bits / self.block_size


def quantize_nf4(w: torch.Tensor, block_size: int = 64, codebook: torch.Tensor | None = None,
                 double_quant: bool = False, dq_block_size: int = 256) -> QuantizedTensor:
    """Blockwise absmax quantization to a 4-bit codebook (NF4 by default).

    With ``double_quant`` the fp32 block scales are themselves quantized (QLoRA's double quantization):
    mean-subtracted, 8-bit symmetric with one fp32 scale per ``dq_block_size`` scales. (QLoRA stores them
    as 8-bit floats; int8 here keeps the code short and has the same storage cost.)
    """
    codebook = NF4_LEVELS if codebook is None else codebook
    flat = w.detach().float().reshape(-1)
    pad = (-len(flat)) % block_size
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, block_size)
    absmax = blocks.abs().amax(1).clamp(min=1e-12)
    normed = blocks / absmax[:, None]
    codes = (normed[..., None] - codebook).abs().argmin(-1).to(torch.uint8)
    scale_bits = 32.0
    if double_quant:
        mean = absmax.mean()
        centred = absmax - mean
        pad2 = (-len(centred)) % dq_block_size
        b2 = torch.nn.functional.pad(centred, (0, pad2)).view(-1, dq_block_size)
        s2 = b2.abs().amax(1).clamp(min=1e-12) / 127
        q2 = torch.round(b2 / s2[:, None]).clamp(-127, 127)
        absmax = ((q2 * s2[:, None]).reshape(-1)[: len(centred)] + mean)
        scale_bits = 8.0 + 32.0 / dq_block_size  # (+ one fp32 mean per tensor, negligible)
    return QuantizedTensor(codes, absmax, tuple(w.shape), block_size, codebook, scale_bits)


def dequantize_nf4(q: QuantizedTensor) -> torch.Tensor:
    values = q.codebook[q.codes.long()] * q.scales[:, None]
    n = math.prod(q.shape)
    return values.reshape(-1)[:n].view(q.shape)


# --------------------------------------------------------------------------------------- pruning
PRUNING_METHODS = ("global_magnitude", "layerwise_magnitude", "global_taylor")


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` of every Conv2d and Linear: the list ``torch.nn.utils.prune`` takes."""
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def sparsity(model: nn.Module) -> float:
    """Fraction of the Conv2d and Linear weights that are exactly zero."""
    params = prunable_weights(model)
    zeros = sum((m.weight == 0).sum().item() for m, _ in params)
    return zeros / sum(m.weight.numel() for m, _ in params)


def taylor_importance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """First-order Taylor importance ``|w * dL/dw|`` of every Conv2d/Linear weight, gradients summed over
    ``x`` in batches (uses data; magnitude does not). Works on a copy; BatchNorm statistics stay fixed."""
    scored = copy.deepcopy(model).train()
    for m in scored.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()  # keep the running statistics fixed
    for i in range(0, len(x), batch_size):
        nn.functional.cross_entropy(scored(x[i:i + batch_size]), y[i:i + batch_size]).backward()
    return {name: (m.weight * m.weight.grad).abs().detach() for name, m in scored.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def pruned_copy(model: nn.Module, amount: float, method: str = "global_magnitude",
                importance: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` (eval mode) with the fraction ``amount`` of its Conv2d/Linear weights set to zero.

    ``global_magnitude``: the smallest |w| over all layers; ``layerwise_magnitude``: the same fraction in
    every layer; ``global_taylor``: the smallest ``importance`` (``taylor_importance`` of ``model``).
    The masks are baked into the weights (``prune.remove``).
    """
    from torch.nn.utils import prune

    if method not in PRUNING_METHODS:
        raise ValueError(f"method must be one of {PRUNING_METHODS}, not {method!r}")
    if method == "global_taylor" and importance is None:
        raise ValueError("global_taylor needs the importance scores (taylor_importance)")
    pruned = copy.deepcopy(model)
    params = prunable_weights(pruned)
    if method == "global_magnitude":
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    elif method == "layerwise_magnitude":
        for m, name in params:
            prune.l1_unstructured(m, name, amount=amount)
    else:
        names = {m: n for n, m in pruned.named_modules()}
        scores = {(m, "weight"): importance[names[m]] for m, _ in params}
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount,
                                  importance_scores=scores)
    for m, name in params:
        prune.remove(m, name)
    return pruned.eval()


def two_four_mask(w: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of every 4 consecutive weights along the input (reduction) dimension
    (NVIDIA's 2:4 semi-structured sparsity); a boolean mask shaped like ``w``."""
    flat = w.detach().flatten(1)  # (out, in*kh*kw): reduction dim last
    pad = (-flat.shape[1]) % 4
    groups = nn.functional.pad(flat.abs(), (0, pad)).view(flat.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.view(flat.shape[0], -1)[:, :flat.shape[1]].view_as(w)


# ------------------------------------------------------------- 2:4 sparsity and channel pruning at a real shape (GPU)
SEMI_STRUCTURED_BACKENDS = ("auto", "cusparselt", "cutlass")


def semi_structured_support(device) -> str | None:
    """``None`` where PyTorch's 2:4 sparse kernels (``torch.sparse.to_sparse_semi_structured``) can run on
    ``device``: an NVIDIA GPU of compute capability 8.0 or higher (Ampere and later); else the reason they cannot."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return f"2:4 sparse kernels need an NVIDIA GPU of compute capability 8.0+ (Ampere or later), not {dev.type}"
    if not torch.cuda.is_available():
        return "2:4 sparse kernels need an NVIDIA GPU, and PyTorch sees none"
    major, minor = torch.cuda.get_device_capability(dev)
    if major < 8:
        return f"2:4 sparse kernels need compute capability 8.0+; this GPU has {major}.{minor}"
    return None


def mlp_projections(hidden: int, intermediate: int, device="cpu", dtype: torch.dtype = torch.float16,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random weights of a transformer MLP's up projection ``(intermediate, hidden)`` and down projection
    ``(hidden, intermediate)``, each N(0, 1/fan_in) so activations stay near unit scale in FP16. Random weights
    are honest for speed (a kernel's time depends on shapes, not values), never for accuracy."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    w_up = torch.randn(intermediate, hidden, generator=g) / math.sqrt(hidden)
    w_down = torch.randn(hidden, intermediate, generator=g) / math.sqrt(intermediate)
    return w_up.to(device=device, dtype=dtype), w_down.to(device=device, dtype=dtype)


def channel_prune_mlp(w_up: torch.Tensor, w_down: torch.Tensor, keep_frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Structured pruning of an MLP's intermediate features: keep the ``keep_frac`` rows of ``w_up`` with the
    largest L1 norm (Li et al., 2017) and the same columns of ``w_down``: a smaller *dense* pair, in order."""
    if not 0 < keep_frac <= 1:
        raise ValueError(f"keep_frac must be in (0, 1], not {keep_frac}")
    if w_up.shape[0] != w_down.shape[1] or w_up.shape[1] != w_down.shape[0]:
        raise ValueError(f"w_up {tuple(w_up.shape)} and w_down {tuple(w_down.shape)} are not an MLP's pair")
    n_keep = max(1, int(round(w_up.shape[0] * keep_frac)))
    keep = w_up.float().abs().sum(1).topk(n_keep).indices.sort().values
    return w_up[keep].contiguous(), w_down[:, keep].contiguous()


def mlp_forward(x: torch.Tensor, w_up, w_down) -> torch.Tensor:
    """``down(up(x))``: the MLP's two projections (dense or ``SparseSemiStructuredTensor`` weights). The gate
    projection and the activation are left out: the gate is the up projection's shape again, and elementwise work
    does not change with sparsity."""
    return nn.functional.linear(nn.functional.linear(x, w_up), w_down)


def _to_semi_structured(w: torch.Tensor):
    """The 2:4-masked ``w`` compressed for the sparse kernels (values plus 2-bit position metadata)."""
    return torch.sparse.to_sparse_semi_structured(w)


def _host_ms(fn, n: int) -> float:
    """Host time per call to issue ``n`` back-to-back calls, without waiting for the GPU: where it nearly equals the
    synchronised time per call, the host (the call's set-up and launches), not the kernel, sets the pace."""
    import time

    from optcourse.measure import bench

    bench.cuda_synchronize()
    t0 = time.perf_counter()
    bench.back_to_back(fn, n)()
    elapsed = time.perf_counter() - t0
    bench.cuda_synchronize()
    return elapsed * 1e3 / n


def _graphed(fn):
    """``fn`` captured once in a CUDA graph; the returned callable replays it (no host work per call but the replay).
    Not ``engines.CudaGraphRunner``: that one serves a model called with new inputs (a per-call copy into its static
    input), while here ``fn`` closes over its input and the timing is meant to be of the kernels alone."""
    fn()  # warm: plans, workspaces and kernels chosen before the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def compare_semi_structured_mlp(hidden: int, intermediate: int, tokens, *, device="cuda",
                                dtype: torch.dtype = torch.float16, keep_frac: float = 0.5, rounds: int = 5,
                                repeat: int = 5, min_sample_ms: float = 2.0, backend: str = "auto",
                                cuda_graphs: bool = False, seed: int = 0) -> list[dict]:
    """A transformer MLP's up and down projections (``hidden -> intermediate -> hidden``, random weights) at each
    token count of ``tokens``: dense, the same weights 2:4-pruned by magnitude (``two_four_mask``) and run by
    PyTorch's semi-structured sparse kernels (``torch.sparse.to_sparse_semi_structured``: cuSPARSELt, or CUTLASS
    with ``backend="cutlass"``), and the dense pair channel-pruned to ``keep_frac`` of its intermediate features
    (``channel_prune_mlp``), timed side by side (``bench.compare``: warm-up, CUDA synchronisation, alternating
    rounds; each sample times back-to-back calls for at least ``min_sample_ms``, so a microsecond kernel is not
    drowned by the synchronisation). One row per token count: per-call medians in ms, speedups over dense (median
    of the rounds' ratios) with their per-round range, the dense pair's TFLOP/s, and the 2:4 kernels' relative error
    against the dense product of the same masked weights (``sparse_rel_error``) beside that dense product's own
    rounding error against FP32 (``rounding_rel_error``); ``*_host_share``: the host's time to issue a call over the
    synchronised time per call (near 1: the host sets the pace). ``cuda_graphs``: each variant also captured in a CUDA
    graph and its replays timed the same way (``graph_*`` keys: the kernels without the per-call host work; where the
    capture fails, ``graph_error`` says why). Needs a GPU (``semi_structured_support``)."""
    from optcourse.measure import bench
    from optcourse.techniques.quantization import relative_error

    if hidden < 64 or intermediate < 64 or hidden % 64 or intermediate % 64:
        raise ValueError(f"hidden and intermediate must be positive multiples of 64, not {hidden}, {intermediate}")
    tokens = [int(n) for n in tokens]
    if not tokens or min(tokens) < 1:
        raise ValueError(f"tokens must be one or more positive token counts, not {tokens}")
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, not {dtype}")
    if backend not in SEMI_STRUCTURED_BACKENDS:
        raise ValueError(f"backend must be one of {SEMI_STRUCTURED_BACKENDS}, not {backend!r}")
    if rounds < 1 or repeat < 1 or min_sample_ms <= 0:
        raise ValueError("rounds and repeat must be >= 1 and min_sample_ms > 0")
    reason = semi_structured_support(device)
    if reason:
        raise RuntimeError(reason)

    from torch.sparse import SparseSemiStructuredTensor

    cutlass = backend == "cutlass" or (backend == "auto" and not torch.backends.cusparselt.is_available())
    forced = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = cutlass
    try:
        w_up, w_down = mlp_projections(hidden, intermediate, device, dtype, seed)
        m_up, m_down = w_up * two_four_mask(w_up), w_down * two_four_mask(w_down)
        s_up, s_down = _to_semi_structured(m_up), _to_semi_structured(m_down)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = forced
    p_up, p_down = channel_prune_mlp(w_up, w_down, keep_frac)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    rows = []
    with torch.no_grad():
        for n in tokens:
            x = torch.randn(n, hidden, generator=g).to(device=device, dtype=dtype)
            variants = {"dense": lambda: mlp_forward(x, w_up, w_down),
                        "2:4 sparse": lambda: mlp_forward(x, s_up, s_down),
                        "channel-pruned": lambda: mlp_forward(x, p_up, p_down)}
            masked = mlp_forward(x, m_up, m_down)
            sparse_rel_error = relative_error(masked, mlp_forward(x, s_up, s_down))
            rounding_rel_error = relative_error(mlp_forward(x.float(), m_up.float(), m_down.float()), masked)
            one_call = min(bench.measure(f, warmup=2, repeat=3).median for f in variants.values())
            inner = max(1, math.ceil(min_sample_ms / max(one_call, 1e-6)))
            cmp = bench.compare({k: bench.back_to_back(f, inner) for k, f in variants.items()}, rounds=rounds,
                                repeat=repeat,
                                warmup=1)
            med = {k: cmp.stats[k].median / inner for k in variants}
            sp_lo, sp_hi = cmp.speedup_spread("dense", "2:4 sparse")
            ch_lo, ch_hi = cmp.speedup_spread("dense", "channel-pruned")
            rows.append({"tokens": n, "dense_ms": med["dense"], "sparse_ms": med["2:4 sparse"],
                         "channel_pruned_ms": med["channel-pruned"],
                         "sparse_speedup": cmp.speedup("dense", "2:4 sparse"), "sparse_speedup_min": sp_lo,
                         "sparse_speedup_max": sp_hi, "channel_speedup": cmp.speedup("dense", "channel-pruned"),
                         "channel_speedup_min": ch_lo, "channel_speedup_max": ch_hi,
                         "dense_tflops": 4 * n * hidden * intermediate / med["dense"] / 1e9,
                         "sparse_rel_error": sparse_rel_error, "rounding_rel_error": rounding_rel_error,
                         "calls_per_sample": inner, "backend": "cutlass" if cutlass else "cusparselt",
                         "dense_host_share": _host_ms(variants["dense"], inner) / med["dense"],
                         "sparse_host_share": _host_ms(variants["2:4 sparse"], inner) / med["2:4 sparse"]})
            if cuda_graphs:
                try:
                    graphed = {k: _graphed(f) for k, f in variants.items()}
                    one_call = min(bench.measure(f, warmup=2, repeat=3).median for f in graphed.values())
                    inner_g = max(1, math.ceil(min_sample_ms / max(one_call, 1e-6)))
                    gcmp = bench.compare({k: bench.back_to_back(f, inner_g) for k, f in graphed.items()}, rounds=rounds,
                                         repeat=repeat, warmup=1)
                except Exception as exc:  # noqa: BLE001 - a kernel that cannot be captured is a result to report
                    rows[-1]["graph_error"] = f"{type(exc).__name__}: {exc}"[:300]
                    bench.cuda_synchronize()
                    continue
                lo, hi = gcmp.speedup_spread("dense", "2:4 sparse")
                rows[-1].update({f"graph_{k.replace('2:4 sparse', 'sparse').replace('-', '_')}_ms":
                                 gcmp.stats[k].median / inner_g for k in graphed})
                rows[-1].update({"graph_sparse_speedup": gcmp.speedup("dense", "2:4 sparse"), "graph_sparse_speedup_min": lo,
                                 "graph_sparse_speedup_max": hi,
                                 "graph_channel_speedup": gcmp.speedup("dense", "channel-pruned")})
    return rows


def prune_block_channels(model: nn.Module, keep_frac: float) -> nn.Module:
    """Structured pruning of the digits ResNet: a new model whose BasicBlocks (``layer1`` .. ``layer3``)
    keep the top ``keep_frac`` inner channels by filter L1 norm (conv1's filters, bn1, conv2's inputs)."""
    model = copy.deepcopy(model)
    for block in (model.layer1, model.layer2, model.layer3):
        c1, b1, c2 = block.conv1, block.bn1, block.conv2
        n_keep = max(1, int(round(c1.out_channels * keep_frac)))
        keep = c1.weight.detach().abs().sum((1, 2, 3)).topk(n_keep).indices.sort().values
        new_c1 = nn.Conv2d(c1.in_channels, n_keep, 3, c1.stride, 1, bias=False)
        new_c1.weight.data = c1.weight.data[keep].clone()
        new_b1 = nn.BatchNorm2d(n_keep)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(new_b1, attr).data = getattr(b1, attr).data[keep].clone()
        new_c2 = nn.Conv2d(n_keep, c2.out_channels, 3, 1, 1, bias=False)
        new_c2.weight.data = c2.weight.data[:, keep].clone()
        block.conv1, block.bn1, block.conv2 = new_c1, new_b1, new_c2
    return model.eval()


def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 128) -> nn.Module:
    """Re-estimate BatchNorm running statistics on ``x`` after surgery (the old ones describe the unpruned net)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    return model.eval()


def finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 1e-3, seed: int = 0,
             batch_size: int = 64) -> nn.Module:
    """Plain AdamW fine-tuning of an image classifier with small random shifts (up to 3 pixels), the
    augmentation the digits ResNet was trained with; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            shift = torch.randint(-3, 4, (2,), generator=g).tolist()
            loss = nn.functional.cross_entropy(model(torch.roll(x[idx], shifts=shift, dims=(2, 3))), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


# --------------------------------------------------------------------------------------- distillation
class StudentCNN(nn.Module):
    """Three strided convolutions with batch norm and a linear head: ~50x fewer parameters than the digits ResNet."""

    def __init__(self, width: int = 8):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.net = nn.Sequential(*block(1, width), *block(width, 2 * width), *block(2 * width, 2 * width),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * width, 10))

    def forward(self, x):
        return self.net(x)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, times T^2 (Hinton et al., 2015)."""
    return nn.functional.kl_div(nn.functional.log_softmax(student_logits / temperature, -1),
                                nn.functional.softmax(teacher_logits / temperature, -1),
                                reduction="batchmean") * temperature * temperature


def train_student(x_labelled: torch.Tensor, y_labelled: torch.Tensor, steps: int, *,
                  transfer_x: torch.Tensor | None = None, teacher_logits: torch.Tensor | None = None,
                  temperature: float = 4.0, alpha: float = 0.7, batch_size: int = 32, seed: int = 0) -> nn.Module:
    """Train a ``StudentCNN`` for ``steps`` AdamW steps on labelled batches; with ``teacher_logits`` (of
    ``transfer_x``) each step adds a soft-target batch from the transfer set, weighted ``alpha``. The same ``seed``
    gives the same initialisation and the same labelled batches with or without distillation (the transfer batches
    draw from a generator of their own), so the two students of a seed differ by the distillation only."""
    torch.manual_seed(seed)
    student = StudentCNN()
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    g_transfer = torch.Generator().manual_seed(seed + 1_000_003)
    student.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x_labelled), (batch_size,), generator=g)
        loss = nn.functional.cross_entropy(student(x_labelled[idx]), y_labelled[idx])
        if teacher_logits is not None:
            tidx = torch.randint(0, len(transfer_x), (batch_size,), generator=g_transfer)
            soft = distillation_loss(student(transfer_x[tidx]), teacher_logits[tidx], temperature)
            loss = alpha * soft + (1 - alpha) * loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return student.eval()


# --------------------------------------------------------------------------------------- NF4 on a model
def nf4_roundtrip_copy(model: nn.Module, names, block_size: int = 64, codebook: torch.Tensor | None = None,
                       double_quant: bool = False) -> nn.Module:
    """A copy of ``model`` whose named modules' weights went through ``quantize_nf4`` and back
    (simulated 4-bit storage, to measure what it does to the model's quality)."""
    names = set(names)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for n, m in copied.named_modules():
            if n in names:
                m.weight.copy_(dequantize_nf4(quantize_nf4(m.weight, block_size, codebook=codebook,
                                                           double_quant=double_quant)))
    return copied
