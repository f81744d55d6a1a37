"""LLM decoding, minimal and tested: KV-cached greedy decoding, speculative decoding, tiled attention.

- ``greedy_decode`` / ``speculative_greedy``: KV-cached greedy decoding and draft-then-verify
  speculative decoding (Leviathan et al., 2023; Chen et al., 2023), greedy acceptance, with a draft
  model or a model-free ``prompt_lookup_proposer``.
- ``speculative_sample``: the rejection-sampling step that keeps the target's distribution exactly.
- ``naive_attention`` / ``tiled_attention``: attention with the full score matrix vs the
  FlashAttention-style online softmax over tiles (Dao et al., 2022).
- ``new_kv_cache`` / ``crop_cache``: a transformers KV cache to pass between forward calls, and shortening it.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

# --------------------------------------------------------------------------------------- decoding


def new_kv_cache():
    """An empty transformers ``DynamicCache`` (pass it as ``past_key_values`` with ``use_cache=True``)."""
    from transformers import DynamicCache

    return DynamicCache()


def _ids(model, ids: list[list[int]]) -> torch.Tensor:
    """Token ids as a tensor on ``model``'s device (a model on the GPU takes its inputs there)."""
    return torch.tensor(ids, device=next(model.parameters()).device)


@torch.no_grad()
def greedy_decode(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding with a KV cache, one token per forward pass; returns the new token ids."""
    cache = new_kv_cache()
    logits = model(_ids(model, [prompt_ids]), past_key_values=cache, use_cache=True).logits
    out = [int(logits[0, -1].argmax())]
    while len(out) < max_new_tokens:
        logits = model(_ids(model, [[out[-1]]]), past_key_values=cache, use_cache=True).logits
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
    tcache, dcache = new_kv_cache(), new_kv_cache()
    if len(seq) > 1:
        target(_ids(target, [seq[:-1]]), past_key_values=tcache, use_cache=True)
        if is_model:
            draft(_ids(draft, [seq[:-1]]), past_key_values=dcache, use_cache=True)
    rounds = drafted = accepted = draft_forwards = 0
    while len(seq) - n_prompt < max_new_tokens:
        if is_model:
            crop_cache(dcache, len(seq) - 1)
            inp = seq[dcache.get_seq_length():]
            proposal = []
            for _ in range(k):
                logits = draft(_ids(draft, [inp]), past_key_values=dcache, use_cache=True).logits
                draft_forwards += 1
                proposal.append(int(logits[0, -1].argmax()))
                inp = proposal[-1:]
        else:
            proposal = [int(t) for t in draft(seq, k)][:k]
        crop_cache(tcache, len(seq) - 1)
        logits = target(_ids(target, [seq[-1:] + proposal]), past_key_values=tcache, use_cache=True).logits
        preds = logits[0].argmax(-1).tolist()  # preds[i]: target's token after seq + proposal[:i]
        n = 0
        while n < len(proposal) and proposal[n] == preds[n]:
            n += 1
        seq += proposal[:n] + [preds[n]]
        rounds += 1
        drafted += len(proposal)
        accepted += n
    return SpeculativeResult(seq[n_prompt:n_prompt + max_new_tokens], rounds, drafted, accepted, draft_forwards)


def expected_speedup(alpha: float, k: int, c: float, verify: float = 1.0) -> float:
    """Leviathan et al. (2023), Thm 3.8: speedup of speculative decoding with acceptance rate ``alpha``,
    ``k`` drafted tokens and draft/target cost ratio ``c`` (i.i.d. acceptance assumption). ``verify``: the target's
    pass over the ``k + 1`` tokens in units of one decode step (the theorem takes 1: decode is memory-bound)."""
    tokens = k + 1 if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)
    return tokens / (c * k + verify)


def break_even_acceptance(k: int, c: float, verify: float = 1.0) -> float:
    """The acceptance rate at which ``expected_speedup`` is 1: a draft accepted less often slows decoding down
    (1.0 when even full acceptance cannot pay for the draft)."""
    if expected_speedup(1.0, k, c, verify) <= 1:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):  # the speedup grows with alpha: bisection
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_speedup(mid, k, c, verify) < 1 else (lo, mid)
    return hi


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


def attention_peak_bytes(n: int, backend: str, *, batch: int = 1, heads: int = 4, head_dim: int = 64,
                         device: str = "cpu", dtype: torch.dtype = torch.float32) -> int:
    """Peak memory one causal ``scaled_dot_product_attention`` call adds above its inputs, with SDPA's ``backend``
    (``"math"``: the composite that materialises the (n x n) scores; ``"flash"``: the tiled kernel).

    CUDA: the allocator's own high-water mark (``torch.cuda.max_memory_allocated``), reset after the inputs are made.
    CPU: there is no allocator statistic, and a process's peak RSS never falls: the call runs in a fresh Python
    process (one per call), whose peak RSS (``VmHWM``) growth over what it had after making the inputs is the answer. Either
    way an earlier call cannot hide a later one's peak (the trap of reading ``ru_maxrss`` twice in one process)."""
    if backend not in ("math", "flash"):
        raise ValueError(f"backend must be 'math' or 'flash', got {backend!r}")
    if device.startswith("cuda"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        q, k, v = (torch.randn(batch, heads, n, head_dim, device=device, dtype=dtype) for _ in range(3))
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with sdpa_kernel([SDPBackend.MATH if backend == "math" else SDPBackend.FLASH_ATTENTION]):
            out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out, q, k, v
        return int(peak)
    import subprocess
    import sys

    # the peak of this process's own memory map (VmHWM): getrusage's ru_maxrss would start at the parent's peak,
    # which exec carries over (a notebook kernel of 2 GB would hide any call below that)
    code = ("import resource, sys, torch\n"
            "from torch import nn\n"
            "def peak():\n"
            "    try:\n"
            "        with open('/proc/self/status') as f:\n"
            "            return next(int(l.split()[1]) * 1024 for l in f if l.startswith('VmHWM:'))\n"
            "    except (OSError, StopIteration):\n"
            "        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
            "from torch.nn.attention import SDPBackend, sdpa_kernel\n"
            "torch.set_num_threads(1)\n"
            f"q, k, v = (torch.randn({batch}, {heads}, {n}, {head_dim}, dtype=torch.{str(dtype).split('.')[-1]}) "
            "for _ in range(3))\n"
            "before = peak()\n"
            f"with sdpa_kernel([SDPBackend.{'MATH' if backend == 'math' else 'FLASH_ATTENTION'}]):\n"
            "    out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)\n"
            "print(peak() - before)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"the {backend} attention process failed: {run.stderr[-1500:]}")
    return int(run.stdout.strip().splitlines()[-1])
