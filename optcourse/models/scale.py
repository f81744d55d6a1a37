"""Llama models of real shapes with random weights, for measuring speed at the scale the course talks about.

Speed depends on a model's shape (bytes of weights, KV cache per token, matrix sizes), not on its weight values, so
a model of Llama-3.1-8B's shape with random weights, made on the GPU from a config in the repository
(``optcourse/assets/scale/*.json``), decodes at the speed the real one would; nothing is downloaded. Its text is
noise: accuracy and text quality stay on the trained course models. Every notebook that uses one says so next to
the number.

``decode_speed`` times one decode step (batch ``B``, ``C`` tokens already in the KV cache) and ``decode_bound``
is what the memory bandwidth allows: each step reads every weight once and the whole KV cache, so
``tokens/s <= B / ((weight bytes + B * C * KV bytes per token) / bandwidth)``.
"""
from __future__ import annotations

import json

import torch

from optcourse.core.paths import PACKAGE_DIR

SHAPES_DIR = PACKAGE_DIR / "assets" / "scale"


def shapes() -> list[str]:
    return sorted(p.stem for p in SHAPES_DIR.glob("*.json"))


def llama_config(shape: str):
    """The ``LlamaConfig`` of ``shape`` (a file of ``optcourse/assets/scale``: ``llama-3.1-8b``, ``llama-3.2-1b``,
    ``cpu-small``)."""
    from transformers import LlamaConfig

    path = SHAPES_DIR / f"{shape}.json"
    if not path.is_file():
        raise ValueError(f"unknown model shape {shape!r}; choose one of {shapes()}")
    fields = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    return LlamaConfig(**fields)


def random_llama(shape: str, device: str = "cpu", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """A ``LlamaForCausalLM`` of ``shape`` with random weights, built directly on ``device`` in ``dtype`` (an 8B
    model takes seconds on a GPU, not the minutes of an initialisation on the CPU)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config = llama_config(shape)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def serving_folder(shape: str, dest) -> "pathlib.Path":
    """A model folder vLLM serves with ``--load-format dummy`` (random weights made on the device, nothing read from
    disk): ``shape``'s config and the course Llama's tokenizer (its 8192 token ids all lie inside any shape's
    vocabulary). Written once into ``dest``; returns it."""
    import pathlib
    import shutil

    from optcourse.models.llm import llm_dir

    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = llama_config(shape).to_dict()
    config.update(architectures=["LlamaForCausalLM"], torch_dtype="bfloat16", _optcourse_shape=shape)
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(llm_dir(None) / name, dest / name)
    return dest


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def kv_bytes_per_token(config, dtype_bytes: int = 2) -> int:
    """K and V for every layer and KV head: ``2 * layers * kv_heads * head_dim * bytes``."""
    from optcourse.techniques.kvcache import kv_bytes_per_token as per_token, model_kv_shape

    shape = model_kv_shape(config)
    return per_token(shape["num_layers"], shape["num_kv_heads"], shape["head_dim"], dtype_bytes)


def decode_step_bytes(weights: int, kv_per_token: int, batch: int, context: int) -> int:
    """The fewest bytes one decode step reads: every weight once, and the KV cache of ``batch`` sequences of
    ``context`` tokens once."""
    return weights + batch * context * kv_per_token


def decode_bound(weights: int, kv_per_token: int, batch: int, context: int, bandwidth_bytes_per_s: float) -> float:
    """Tokens/s a decode step cannot beat when it must read all weights and the whole KV cache once."""
    return batch / (decode_step_bytes(weights, kv_per_token, batch, context) / bandwidth_bytes_per_s)


def decode_step_cost(model, batch: int, context: int) -> dict:
    """FLOPs and fewest bytes of one decode step of ``model`` (``batch`` new tokens, ``context`` tokens cached), for a
    roofline: 2 FLOPs per weight per sequence (the input embedding is a lookup, not a product) plus the attention's
    4 * context * heads * head_dim per layer and sequence (scores and weighted sum); bytes as ``decode_step_bytes`` in
    the model's own dtype. Returns ``{"flops", "bytes", "intensity"}``."""
    from optcourse.techniques.kvcache import model_kv_shape

    config = model.config
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    tied = getattr(config, "tie_word_embeddings", False)
    matmul_params = params if tied else params - embedding.numel()  # tied: the lm_head product uses it
    shape = model_kv_shape(config)
    heads = config.num_attention_heads
    flops = 2 * matmul_params * batch + 4 * batch * context * shape["num_layers"] * heads * shape["head_dim"]
    element = next(model.parameters()).element_size()
    moved = decode_step_bytes(weight_bytes(model), kv_bytes_per_token(config, element), batch, context)
    return {"flops": float(flops), "bytes": float(moved), "intensity": flops / moved}


def decode_step(model, batch: int, context: int, new_tokens: int = 1):
    """A function that runs one decode step of ``batch`` sequences with ``context`` tokens in their KV cache, for
    timing: the cache is prefilled once here (not timed) and cropped back after each step, so every call sees the same
    context. Inputs are random token ids on the model's device. ``new_tokens`` > 1: the step feeds that many tokens
    per sequence and keeps all their logits (speculative decoding's verification of ``new_tokens - 1`` drafts)."""
    from optcourse.techniques.decoding import crop_cache, new_kv_cache

    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, context), device=device)
    cache = new_kv_cache()
    with torch.inference_mode():
        model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)  # the prompt's logits are not needed
    nxt = torch.randint(3, vocab, (batch, new_tokens), device=device)

    @torch.inference_mode()
    def step():
        logits = model(nxt, past_key_values=cache, use_cache=True, logits_to_keep=new_tokens).logits
        crop_cache(cache, context)
        return logits

    return step


def speculative_costs(target, draft, *, k: int, context: int, steps: int = 8, rounds: int = 5, repeat: int = 3) -> dict:
    """The cost side of speculative decoding for a ``target`` and a ``draft`` model on their device, batch 1, with
    ``context`` tokens cached: one decode step of the target, its verification pass over ``k + 1`` tokens and one
    decode step of the draft, timed side by side in alternating rounds (``bench.compare``; each sample ``steps``
    back-to-back steps). Returns the medians in ms, ``c`` (draft step / target step: Leviathan et al.'s cost ratio),
    ``verify`` (verification / target step) and ``bytes_ratio`` (the draft's fewest bytes per step over the
    target's, ``decode_step_bytes``: what ``c`` would be if both steps were pure weight and KV reads)."""
    from optcourse.measure import bench

    steps_fns = {"target": decode_step(target, 1, context), "verify": decode_step(target, 1, context, k + 1),
                 "draft": decode_step(draft, 1, context)}
    cmp = bench.compare({name: bench.back_to_back(fn, steps) for name, fn in steps_fns.items()}, rounds=rounds,
                        repeat=repeat, warmup=1)
    ms = {name: cmp.stats[name].median / steps for name in steps_fns}

    def fewest_bytes(model):
        element = next(model.parameters()).element_size()
        return decode_step_bytes(weight_bytes(model), kv_bytes_per_token(model.config, element), 1, context)

    return {"target_ms": ms["target"], "verify_ms": ms["verify"], "draft_ms": ms["draft"],
            "c": ms["draft"] / ms["target"], "verify": ms["verify"] / ms["target"],
            "bytes_ratio": fewest_bytes(draft) / fewest_bytes(target), "k": k, "context": context}


def decode_speed(model, batch: int, context: int, *, steps: int = 8, repeat: int = 5, warmup: int = 2) -> dict:
    """Median time of one decode step of ``batch`` sequences with ``context`` tokens in their KV cache (the cache is
    cropped back after each step, so every timed step sees the same context): ``{"ms_per_step", "tokens_per_s",
    "samples_ms"}``. Each sample is ``steps`` steps, timed by ``bench.measure`` (synchronised), divided by ``steps``."""
    from optcourse.measure.bench import measure

    stats = measure(decode_step(model, batch, context), warmup=warmup, repeat=repeat, inner=steps)
    ms = stats.median
    return {"ms_per_step": ms, "tokens_per_s": batch / ms * 1e3, "samples_ms": list(stats.samples_ms)}
