"""Lab 03's deployment, in one place for its notebook and its grader: the model, the server's fixed flags, the KV
cache budget, the prompts and the latency SLO of each hardware profile.

The model: on ``cpu`` the course Llama (trained, 8 M parameters); on ``cuda`` a model of Llama-3.1-8B's shape with
**random weights** (``scale.serving_folder``, vLLM's ``--load-format dummy``): serving speed depends on the shape, not
on the weights' values, so the sweep and the SLO are measured at the scale of a real deployment; its text is noise.

The grader re-measures a student's engine configuration with exactly these (``optcourse.autograde.perf``'s
``EngineSloCheck``), so the notebook and the grade cannot disagree on what the SLO is.
"""
from __future__ import annotations

import dataclasses
import pathlib

from optcourse.serving.engine import SLO, EngineConfig

MAX_MODEL_LEN = 512
# vLLM's default KV block size on each backend (tokens per block)
BLOCK_SIZE = {"cpu": 128, "cuda": 16}
# the model each profile serves: None is the course Llama, else a shape of optcourse/assets/scale (random weights)
SCALE_SHAPE = {"cpu": None, "cuda": "llama-3.1-8b"}
# The KV cache's memory budget: 256 MiB on cpu, 65,536 bf16 tokens of the course Llama (4096 bytes per token);
# 16 GiB on cuda, 131,072 tokens of the 8B shape (131,072 bytes per token)
KV_BUDGETS = {"cpu": 256 << 20, "cuda": 16 << 30}

# The SLO a deployment must meet: every request's TTFT and TPOT at most these while requests arrive as a
# Poisson process at the rate, over a load of `requests` requests of `max_tokens` tokens each.
# cpu: vLLM's CPU build on 2 cores (idle, 2026-12-01, 32-token requests) serves the course Llama at p99 TTFT 39 ms
# at 16 req/s and 209 ms at 32 req/s with the reference configuration; a single-sequence engine (max_num_seqs 1)
# queues from 4 req/s on (p50 TTFT 0.7 s), a KV cache of one long request (5 blocks) from 16 req/s on (p99 TTFT
# 0.7 s over 40 requests, growing with the load's length): at 16 req/s for 80 requests batching and cache size decide.
# cuda: an interactive chat objective (TTFT 200 ms, 25 ms per token: 40 tokens/s per user) for the 8B shape at
# 32 req/s of 128 tokens (4096 tok/s offered; vLLM served 25k tok/s at batch 256 on one H200, 2026-11-30).
# cpu-avx2: an x86 CPU without AVX-512, where vLLM's CPU build runs its AVX2 kernels (vllm.platforms.cpu): the
# reference's open-loop peak fell from 452+ to 254 tok/s on one machine with them, and AVX2 machines themselves differ
# about 2x in speed, so no fixed rate separates a good configuration from a bad one on all of them (at 3 req/s an engine of 2 sequences met the objective on 25 % of its requests on one
# 2-core AMD EPYC and on 100 % on a faster one, where the reference's capacity is 12.5 req/s). So its rate is a share
# (RATE_SHARE) of the reference's capacity measured on the machine itself (engine.capacity: a closed loop of 32
# clients); SLOS holds the nominal rate. AVX2 kernels on a 2-core AMD EPYC (Zen 4, AVX-512 kept from vLLM and torch,
# 2026-12-02, 60 requests of 32 tokens) at 0.6 x 12.5 req/s: the reference 100 % (p99 TTFT 249 ms, TPOT 40 ms), 2
# sequences 38 %, 1 sequence 23 %.
SLOS = {
    "cpu": SLO(ttft_ms=500.0, tpot_ms=50.0, rate_per_s=16.0, requests=80, max_tokens=32,
               kv_budget_bytes=KV_BUDGETS["cpu"]),
    "cpu-avx2": SLO(ttft_ms=1000.0, tpot_ms=120.0, rate_per_s=3.0, requests=60, max_tokens=32,
                    kv_budget_bytes=KV_BUDGETS["cpu"]),
    "cuda": SLO(ttft_ms=200.0, tpot_ms=25.0, rate_per_s=32.0, requests=160, max_tokens=128,
                kv_budget_bytes=KV_BUDGETS["cuda"]),
}

# Task 4's sweep (requests/s): the top rate is beyond what the server keeps up with
SWEEP_RATES = {"cpu": ([4, 16, 64], [2, 4, 8, 16, 32, 64, 128]), "cpu-avx2": ([1, 4, 16], [1, 2, 3, 4, 8, 16, 32]),
               "cuda": ([16, 64, 256], [8, 16, 32, 64, 128, 256])}


def objective(profile: str, has_avx512: bool | None = None) -> str:
    """Which objective and sweep this machine gets: the profile's, or ``cpu-avx2`` on a CPU without AVX-512."""
    if profile != "cpu":
        return profile
    if has_avx512 is None:
        from optcourse.core.hardware import has_avx512 as probe

        has_avx512 = probe()
    return "cpu" if has_avx512 else "cpu-avx2"


# The objectives whose rate is this share of the reference configuration's capacity on the machine (see above)
RATE_SHARE = {"cpu-avx2": 0.6}


def slo(profile: str, capacity_req_s: float | None = None) -> SLO:
    """The SLO of this machine (the notebook and the grader both read it here). Where the objective's rate is a share
    of the reference's capacity (``RATE_SHARE``), ``capacity_req_s`` (``engine.capacity`` of ``REFERENCE`` on this
    machine) sets it; without it the rate is the table's nominal one."""
    table = SLOS[objective(profile)]
    share = RATE_SHARE.get(objective(profile))
    if share is None or capacity_req_s is None:
        return table
    if not capacity_req_s > 0:
        raise ValueError(f"the reference's capacity must be a positive number of requests/s, got {capacity_req_s!r}")
    return dataclasses.replace(table, rate_per_s=round(share * capacity_req_s, 2))


def rate_from_capacity(profile: str) -> bool:
    """Whether this machine's SLO rate is measured (``slo(profile, capacity)``) rather than fixed."""
    return objective(profile) in RATE_SHARE


def sweep_rates(profile: str, smoke: bool) -> list[int]:
    return SWEEP_RATES[objective(profile)][0 if smoke else 1]


# The reference deployment the grader compares a student's choice with: vLLM's scheduling defaults (32 sequences
# per step, chunked prefill and prefix caching on) with the whole budget as KV cache.
REFERENCE = EngineConfig(max_num_seqs=32)


def model(profile: str, model_path=None, workdir=".") -> tuple[pathlib.Path, bool]:
    """The folder to serve and whether its weights are random (``--load-format dummy``): ``model_path`` when given,
    else the profile's model (the 8B shape's folder is written under ``workdir``)."""
    from optcourse.models import scale
    from optcourse.models.llm import llm_dir

    if model_path is not None or SCALE_SHAPE[profile] is None:
        return llm_dir(model_path), False
    shape = SCALE_SHAPE[profile]
    return scale.serving_folder(shape, pathlib.Path(workdir) / f"{shape}-random"), True


# On a GPU vLLM refuses to start when less than gpu_memory_utilization x the GPU's memory is free; the lab keeps
# a reference server running while it starts another (the KV cache is sized in bytes, so the share only has to
# cover weights, activations and the cache: 8B bf16 is 16 GB, the budget 16 GiB)
GPU_MEMORY_SHARE = 0.3


def common_args(smoke: bool = True, random_weights: bool = False, profile: str = "cpu") -> list[str]:
    """The flags every lab-03 server gets: the context length, bf16 weights, random weights for a scale shape, on a
    GPU its share of the memory and, in smoke mode, ``--enforce-eager`` (no torch.compile: a start in seconds rather
    than minutes)."""
    return (["--max-model-len", str(MAX_MODEL_LEN), "--dtype", "bfloat16"]
            + (["--load-format", "dummy"] if random_weights else [])
            + (["--gpu-memory-utilization", str(GPU_MEMORY_SHARE)] if profile == "cuda" else [])
            + (["--enforce-eager"] if smoke else []))


def prompts(count: int = 64) -> list[str]:
    """``count`` prompts of 300 characters from the course Llama's held-out text (~100 tokens each)."""
    from optcourse.models.llm import heldout_text

    text = heldout_text()
    return [text[i * 400:(i * 400) + 300] for i in range(count)]


def kv_bytes_per_token(config, cache_dtype: str = "auto") -> int:
    """The library's reference KV arithmetic for a transformers config (``auto``: bf16)."""
    from optcourse.techniques import kvcache

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return kvcache.kv_bytes_per_token(config.num_hidden_layers, config.num_key_value_heads, head_dim,
                                      kvcache.dtype_bytes("bfloat16" if cache_dtype == "auto" else cache_dtype))


def check(config: EngineConfig, model_config, profile: str) -> None:
    """Refuse (``ConfigError``) a configuration vLLM or the lab's budget would refuse, before a server starts."""
    from optcourse.techniques import kvcache

    block = BLOCK_SIZE[profile]
    # vLLM keeps one block back (its null block): a cache must have one more than a max-length request needs
    min_kv = (kvcache.blocks_needed(MAX_MODEL_LEN, block) + 1) * block * kv_bytes_per_token(model_config, config.kv_cache_dtype)
    config.check(MAX_MODEL_LEN, min_kv, KV_BUDGETS[profile])
