"""Model compression, minimal and tested: low-rank adapters and 4-bit NormalFloat.

- ``LoRALinear`` / ``apply_lora`` / ``merge_lora``: low-rank adapters on frozen linear layers (Hu et al., 2021).
- ``nf4_codebook`` / ``quantize_nf4`` / ``dequantize_nf4``: QLoRA's 4-bit NormalFloat with blockwise
  absmax scaling and optional double quantization of the scales (Dettmers et al., 2023).
"""
from __future__ import annotations

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
        return math.log2(len(self.codebook)) + self.scale_bits / self.block_size


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
