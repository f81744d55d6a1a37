"""Model compression, minimal and tested: low-rank adapters and 4-bit NormalFloat.

- ``LoRALinear`` / ``apply_lora`` / ``merge_lora``: low-rank adapters on frozen linear layers (Hu et al., 2021).
- ``nf4_codebook`` / ``quantize_nf4`` / ``dequantize_nf4``: QLoRA's 4-bit NormalFloat with blockwise
  absmax scaling and optional double quantization of the scales (Dettmers et al., 2023).
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
    ``transfer_x``) each step adds a soft-target batch from the transfer set, weighted ``alpha``."""
    torch.manual_seed(seed)
    student = StudentCNN()
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    student.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x_labelled), (batch_size,), generator=g)
        loss = nn.functional.cross_entropy(student(x_labelled[idx]), y_labelled[idx])
        if teacher_logits is not None:
            tidx = torch.randint(0, len(transfer_x), (batch_size,), generator=g)
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
