"""Small, tested building blocks for lectures 5-7 (pruning/LoRA, LLM inference); batching and the KV
cache are in ``optcourse.kvcache``.

Each piece is the minimal correct version of an idea the lectures measure:

- ``LoRALinear`` / ``apply_lora``: low-rank adapters on frozen linear layers (Hu et al., 2021).
- ``nf4_codebook`` / ``quantize_nf4`` / ``dequantize_nf4``: QLoRA's 4-bit NormalFloat with blockwise
  absmax scaling and optional double quantization of the scales (Dettmers et al., 2023).
- ``greedy_decode`` / ``speculative_greedy``: KV-cached greedy decoding and draft-then-verify
  speculative decoding (Leviathan et al., 2023; Chen et al., 2023), greedy acceptance, with a draft
  model or a model-free ``prompt_lookup_proposer``.
- ``speculative_sample``: the rejection-sampling step that keeps the target's distribution exactly.
- ``naive_attention`` / ``tiled_attention``: attention with the full score matrix vs the
  FlashAttention-style online softmax over tiles (Dao et al., 2022).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import OrderedDict

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


# --------------------------------------------------------------------------------------- decoding


def _cache():
    from transformers import DynamicCache

    return DynamicCache()


@torch.no_grad()
def greedy_decode(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding with a KV cache, one token per forward pass; returns the new token ids."""
    cache = _cache()
    logits = model(torch.tensor([prompt_ids]), past_key_values=cache, use_cache=True).logits
    out = [int(logits[0, -1].argmax())]
    while len(out) < max_new_tokens:
        logits = model(torch.tensor([[out[-1]]]), past_key_values=cache, use_cache=True).logits
        out.append(int(logits[0, -1].argmax()))
    return out


def crop_cache(cache, length: int) -> None:
    """Shorten a transformers cache to ``length`` tokens (no-op when already that short)."""
    remove = cache.get_seq_length() - length
    if remove > 0:
        cache.crop(-remove)


def prompt_lookup_proposer(max_ngram: int = 3, min_ngram: int = 1):
    """Prompt-lookup (n-gram) drafting: find the most recent earlier occurrence of the sequence's last
    ``n`` tokens (longest ``n`` first) and propose the tokens that followed it. No draft model at all
    (vLLM ``--speculative-config '{"method": "ngram", ...}'``); strong on repetitive text, code, RAG."""
    def propose(seq: list[int], k: int) -> list[int]:
        for n in range(max_ngram, min_ngram - 1, -1):
            if len(seq) <= n:
                continue
            tail = seq[-n:]
            for start in range(len(seq) - n - 1, -1, -1):
                if seq[start:start + n] == tail:
                    return seq[start + n:start + n + k]
        return []
    return propose


@dataclasses.dataclass
class SpeculativeResult:
    tokens: list[int]
    rounds: int                # target forward passes (verification steps)
    drafted: int               # draft tokens proposed
    accepted: int              # draft tokens accepted
    draft_forwards: int

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.drafted, 1)

    @property
    def tokens_per_target_forward(self) -> float:
        return len(self.tokens) / max(self.rounds, 1)


@torch.no_grad()
def speculative_greedy(target, draft, prompt_ids: list[int], max_new_tokens: int, k: int = 4) -> SpeculativeResult:
    """Draft up to ``k`` tokens, verify them in one ``target`` pass, keep the agreeing prefix.

    ``draft`` is either a causal LM (drafts greedily with its own KV cache) or a proposer
    ``f(seq, k) -> list[int]`` such as ``prompt_lookup_proposer()``. Each round commits the accepted
    draft tokens plus the target's own next token, so the output is exactly the target's greedy output
    (up to floating-point ties) and each round yields 1..k+1 tokens. Caches are cropped back to the
    committed sequence after a rejection. Invariant: a cache holds the committed sequence except
    (at least) its last token.
    """
    seq = list(prompt_ids)
    n_prompt = len(seq)
    is_model = isinstance(draft, nn.Module)
    tcache, dcache = _cache(), _cache()
    if len(seq) > 1:
        target(torch.tensor([seq[:-1]]), past_key_values=tcache, use_cache=True)
        if is_model:
            draft(torch.tensor([seq[:-1]]), past_key_values=dcache, use_cache=True)
    rounds = drafted = accepted = draft_forwards = 0
    while len(seq) - n_prompt < max_new_tokens:
        if is_model:
            crop_cache(dcache, len(seq) - 1)
            inp = seq[dcache.get_seq_length():]
            proposal = []
            for _ in range(k):
                logits = draft(torch.tensor([inp]), past_key_values=dcache, use_cache=True).logits
                draft_forwards += 1
                proposal.append(int(logits[0, -1].argmax()))
                inp = proposal[-1:]
        else:
            proposal = [int(t) for t in draft(seq, k)][:k]
        crop_cache(tcache, len(seq) - 1)
        logits = target(torch.tensor([seq[-1:] + proposal]), past_key_values=tcache, use_cache=True).logits
        preds = logits[0].argmax(-1).tolist()  # preds[i]: target's token after seq + proposal[:i]
        n = 0
        while n < len(proposal) and proposal[n] == preds[n]:
            n += 1
        seq += proposal[:n] + [preds[n]]
        rounds += 1
        drafted += len(proposal)
        accepted += n
    return SpeculativeResult(seq[n_prompt:n_prompt + max_new_tokens], rounds, drafted, accepted, draft_forwards)


def expected_speedup(alpha: float, k: int, c: float) -> float:
    """Leviathan et al. (2023), Thm 3.8: speedup of speculative decoding with acceptance rate ``alpha``,
    ``k`` drafted tokens and draft/target cost ratio ``c`` (i.i.d. acceptance assumption)."""
    tokens = k + 1 if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)
    return tokens / (c * k + 1)


def speculative_sample(p: torch.Tensor, q: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` independent draws of one speculative step: ``x ~ q``, accept with ``min(1, p[x]/q[x])``,
    else resample from ``norm(max(0, p - q))``. The result is distributed exactly as ``p``."""
    x = torch.multinomial(q, n, replacement=True, generator=generator)
    u = torch.rand(n, generator=generator)
    accept = u < (p[x] / q[x]).clamp(max=1.0)
    residual = (p - q).clamp(min=0)
    residual = residual / residual.sum() if residual.sum() > 0 else p
    resampled = torch.multinomial(residual, n, replacement=True, generator=generator)
    return torch.where(accept, x, resampled)


# --------------------------------------------------------------------------------------- attention


def naive_attention(q, k, v, causal: bool = False) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V with the full (n x n) score matrix materialised."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        n, m = s.shape[-2:]
        s = s.masked_fill(torch.ones(n, m, dtype=torch.bool).triu(m - n + 1), float("-inf"))
    return torch.softmax(s, -1) @ v


def tiled_attention(q, k, v, block_q: int = 64, block_k: int = 64, causal: bool = False) -> torch.Tensor:
    """FlashAttention's algorithm (forward) in PyTorch: tiles of Q against tiles of K/V with an online
    softmax (running max ``m`` and normaliser ``l``), so no (n x n) matrix is ever stored; the largest
    temporary is one (block_q x block_k) tile. Exact, not an approximation."""
    n, m, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(d)
    out = torch.empty_like(q)
    offset = m - n  # causal alignment when queries are the last n positions
    for i in range(0, n, block_q):
        qi = q[..., i:i + block_q, :] * scale
        rows = qi.shape[-2]
        m_i = torch.full(q.shape[:-2] + (rows, 1), float("-inf"), dtype=q.dtype)
        l_i = torch.zeros(q.shape[:-2] + (rows, 1), dtype=q.dtype)
        acc = torch.zeros(q.shape[:-2] + (rows, d), dtype=q.dtype)
        k_end = min(m, i + rows + offset) if causal else m
        for j in range(0, k_end, block_k):
            s = qi @ k[..., j:j + block_k, :].transpose(-2, -1)
            if causal:
                qpos = torch.arange(i, i + rows)[:, None] + offset
                kpos = torch.arange(j, j + s.shape[-1])[None, :]
                s = s.masked_fill(kpos > qpos, float("-inf"))
            m_new = torch.maximum(m_i, s.amax(-1, keepdim=True))
            p = torch.exp(s - m_new)
            corr = torch.exp(m_i - m_new)
            l_i = l_i * corr + p.sum(-1, keepdim=True)
            acc = acc * corr + p @ v[..., j:j + block_k, :]
            m_i = m_new
        out[..., i:i + rows, :] = acc / l_i
    return out
