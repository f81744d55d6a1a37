"""Real vLLM at real scale, for lecture 06: a model of Llama-3.1-8B's shape with **random weights** (vLLM's
``load_format="dummy"``, transformers initialised on the GPU; ``optcourse/models/scale.py``). Speed depends on the
shape (bytes of weights and of KV cache per token, matrix sizes), not on the weights' values; the text is noise.

Three measurements, each in its own process (``python -m optcourse.serving.vllm_scale MODE OUT.json``) so that one
engine's GPU memory is gone before the next starts:

* ``hf``: transformers' ``generate`` with padded **static batches** over requests of varied output lengths (a batch
  runs until its longest request is done; ``min_new_tokens`` = ``max_new_tokens`` so random weights never stop early);
* ``vllm``: offline ``vllm.LLM`` (CUDA graphs, vLLM's default) on the same requests (``ignore_eos``, ``min_tokens`` =
  ``max_tokens``: the same useful tokens), decode tokens/s at batch 1 and a large batch, and its KV-cache size;
* ``vllm_eager``: the same decode measurements with ``enforce_eager=True`` (no CUDA graphs, no torch.compile).

The arithmetic (KV capacity, the static batches' padding, parsing vLLM's log) is plain Python, tested on the CPU.
"""
from __future__ import annotations

import json
import math
import pathlib
import re
import subprocess
import sys
import time

from optcourse.serving import deployment

SHAPE = "llama-3.1-8b"
PROMPT_TOKENS = 128
MAX_MODEL_LEN = 1024
BLOCK_SIZE = deployment.BLOCK_SIZE["cuda"]   # vLLM's default KV block on CUDA (tokens), as in lab 03
GPU_MEMORY_UTILIZATION = 0.5   # the share of the GPU's memory vLLM may use (weights + activations + KV cache)
TOKEN_ID_RANGE = (3, 8000)     # prompt ids inside the course tokenizer's vocabulary (the serving folder's tokenizer)
# what lecture 06 records from these runs (autograder/thresholds/cuda.yaml, each with ``requires: vllm``)
CUDA_METRICS = ("vllm_over_hf_static_varied", "cuda_graphs_decode_speedup_b1", "cuda_graphs_decode_speedup_b256",
                "vllm_decode_b1_tok_s", "vllm_decode_b1_fraction_of_bound", "vllm_kv_tokens_over_arithmetic")


# ---------------------------------------------------------------- arithmetic (CPU, no vLLM)
def varied_lengths(n: int, lo: int = 16, hi: int = 512, seed: int = 0) -> list[int]:
    """``n`` output lengths spread log-uniformly over ``[lo, hi]`` (many short answers, a few long ones), seeded."""
    import random

    rng = random.Random(seed)
    return [int(round(math.exp(rng.uniform(math.log(lo), math.log(hi))))) for _ in range(n)]


def static_batches(lengths: list[int], batch: int) -> list[dict]:
    """Requests taken in arrival order in batches of ``batch``: each batch decodes ``max`` steps for every row."""
    out = []
    for start in range(0, len(lengths), batch):
        chunk = lengths[start:start + batch]
        out.append({"indices": list(range(start, start + len(chunk))), "steps": max(chunk),
                    "useful_tokens": sum(chunk), "computed_tokens": max(chunk) * len(chunk)})
    return out


def static_useful_fraction(lengths: list[int], batch: int) -> float:
    """Useful tokens over the tokens a padded static batch computes (the rest decode past a request's end)."""
    b = static_batches(lengths, batch)
    return sum(x["useful_tokens"] for x in b) / sum(x["computed_tokens"] for x in b)


def param_count(config) -> int:
    """Parameters of a ``LlamaConfig`` (built on the meta device: no memory)."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


def kv_capacity(total_bytes: float, utilization: float, weight_bytes: float, kv_bytes_per_token: int,
                block_size: int = BLOCK_SIZE) -> dict:
    """Lab 03's arithmetic: the KV cache gets what ``utilization`` of the GPU leaves after the weights;
    ``{"kv_bytes", "tokens", "blocks"}`` (whole blocks). An engine also keeps back activations and CUDA graphs, so it
    gets a little less."""
    kv_bytes = utilization * total_bytes - weight_bytes
    if kv_bytes <= 0:
        return {"kv_bytes": 0.0, "tokens": 0, "blocks": 0}
    blocks = int(kv_bytes // (kv_bytes_per_token * block_size))
    return {"kv_bytes": kv_bytes, "tokens": blocks * block_size, "blocks": blocks}


_KV_TOKENS = re.compile(r"GPU KV cache size:\s*([\d,]+)\s*tokens")
_KV_GIB = re.compile(r"Available KV cache memory:\s*([\d.]+)\s*GiB")


def parse_vllm_log(text: str) -> dict:
    """The KV-cache lines vLLM logs at start: ``{"kv_tokens", "kv_gib"}`` (each None when absent; the last wins)."""
    tokens = _KV_TOKENS.findall(text)
    gib = _KV_GIB.findall(text)
    return {"kv_tokens": int(tokens[-1].replace(",", "")) if tokens else None,
            "kv_gib": float(gib[-1]) if gib else None}


def skip_reason(profile: str, vllm_available: bool) -> str | None:
    """Why the real-vLLM section does not run here (None: it runs)."""
    if profile != "cuda":
        return (f"profile {profile!r}: the real-vLLM measurements need the cuda profile (an 8B-shaped model on a GPU); "
                "skipped, nothing recorded")
    if not vllm_available:
        return "vLLM is not installed: the real-vLLM measurements are skipped, nothing recorded"
    return None


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def summarize(hf: dict, graphs: dict, eager: dict, total_bytes: float | None = None) -> dict:
    """The lecture's metrics from the three runs' JSON."""
    out = {
        "vllm_over_hf_static_varied": graphs["varied_tok_s"] / hf["varied_tok_s"],
        "vllm_graphs_b1_tok_s": graphs["decode"]["1"],
        "vllm_eager_b1_tok_s": eager["decode"]["1"],
    }
    big = max(graphs["decode"], key=int)
    out["cuda_graphs_speedup_b1"] = graphs["decode"]["1"] / eager["decode"]["1"]
    out["cuda_graphs_speedup_large"] = graphs["decode"][big] / eager["decode"][big]
    out["large_batch"] = int(big)
    kv = graphs.get("kv", {})
    if kv.get("tokens") and kv.get("arith_tokens"):
        out["vllm_kv_tokens_over_arithmetic"] = kv["tokens"] / kv["arith_tokens"]
    return out


# ---------------------------------------------------------------- measurements (GPU; run in a child process)
def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(*TOKEN_ID_RANGE) for _ in range(PROMPT_TOKENS)] for _ in range(n)]


def run_hf(n_requests: int, batch: int, lo: int, hi: int) -> dict:
    import torch

    from optcourse.models import scale

    model = scale.random_llama(SHAPE, device="cuda", dtype=torch.bfloat16)
    lengths = varied_lengths(n_requests, lo, hi)
    prompts = torch.tensor(_prompts(n_requests), device="cuda")

    def gen(ids, steps):
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, min_new_tokens=steps,
                              do_sample=False, pad_token_id=0, eos_token_id=None)

    gen(prompts[:batch], 8)  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    produced = 0
    for b in static_batches(lengths, batch):
        out = gen(prompts[b["indices"]], b["steps"])
        produced += (out.shape[1] - PROMPT_TOKENS) * out.shape[0]
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    useful = sum(lengths)
    return {"varied_s": secs, "useful_tokens": useful, "computed_tokens": produced, "varied_tok_s": useful / secs,
            "batch": batch, "useful_fraction": static_useful_fraction(lengths, batch)}


def run_vllm(n_requests: int, lo: int, hi: int, eager: bool, large_batch: int, decode_tokens: int,
             workdir: str) -> dict:
    import torch
    from vllm import LLM, SamplingParams

    from optcourse.models import scale

    free, total = torch.cuda.mem_get_info()
    folder = scale.serving_folder(SHAPE, pathlib.Path(workdir) / f"{SHAPE}-random")
    t0 = time.perf_counter()
    llm = LLM(model=str(folder), load_format="dummy", dtype="bfloat16", max_model_len=MAX_MODEL_LEN,
              gpu_memory_utilization=GPU_MEMORY_UTILIZATION, enforce_eager=eager, max_num_seqs=max(256, large_batch),
              seed=0, enable_prefix_caching=False)
    start_s = time.perf_counter() - t0

    def generate(prompts, lengths):
        params = [SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0) for n in lengths]
        t = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        secs = time.perf_counter() - t
        return secs, sum(len(o.outputs[0].token_ids) for o in outs)

    generate(_prompts(8, seed=1), [16] * 8)  # warm-up
    res = {"eager": eager, "start_s": start_s, "total_bytes": total, "free_bytes_at_start": free, "decode": {}}
    for b in (1, large_batch):
        secs, produced = generate(_prompts(b, seed=2), [decode_tokens] * b)
        res["decode"][str(b)] = produced / secs
    if not eager:
        lengths = varied_lengths(n_requests, lo, hi)
        secs, produced = generate(_prompts(n_requests), lengths)
        assert produced == sum(lengths), (produced, sum(lengths))
        res.update(varied_s=secs, useful_tokens=produced, varied_tok_s=produced / secs)
        config = scale.llama_config(SHAPE)
        weights = 2 * param_count(config)
        per_token = scale.kv_bytes_per_token(config, 2)
        arith = kv_capacity(total, GPU_MEMORY_UTILIZATION, weights, per_token)
        blocks = None
        try:
            blocks = llm.llm_engine.vllm_config.cache_config.num_gpu_blocks
        except Exception:  # noqa: BLE001 - attribute moved between versions: the log line is the fallback
            pass
        res["kv"] = {"blocks": blocks, "tokens": blocks * BLOCK_SIZE if blocks else None, "weight_bytes": weights,
                     "kv_bytes_per_token": per_token, "arith_tokens": arith["tokens"],
                     "arith_kv_bytes": arith["kv_bytes"], "utilization": GPU_MEMORY_UTILIZATION}
    return res


def launch(mode: str, out_dir, *, n_requests: int = 128, batch: int = 64, lo: int = 16, hi: int = 512,
           large_batch: int = 256, decode_tokens: int = 256, timeout: int = 900) -> dict:
    """Run one measurement in a child process; returns its JSON (plus ``log_kv``: the KV lines of vLLM's log)."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result, log = out_dir / f"vllm_scale_{mode}.json", out_dir / f"vllm_scale_{mode}.log"
    args = [sys.executable, "-m", "optcourse.serving.vllm_scale", mode, str(result), str(n_requests), str(batch),
            str(lo), str(hi), str(large_batch), str(decode_tokens), str(out_dir)]
    with open(log, "w") as fh:
        proc = subprocess.run(args, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed (exit {proc.returncode}); end of {log}:\n{text[-3000:]}")
    data = json.loads(result.read_text())
    data["log_kv"] = parse_vllm_log(text)
    kv = data.get("kv")
    if kv is not None and not kv.get("tokens") and data["log_kv"]["kv_tokens"]:
        kv["tokens"] = data["log_kv"]["kv_tokens"]
    return data


def main(argv: list[str]) -> int:
    mode, out, n, batch, lo, hi, large, dec, workdir = argv
    n, batch, lo, hi, large, dec = map(int, (n, batch, lo, hi, large, dec))
    if mode == "hf":
        res = run_hf(n, batch, lo, hi)
    elif mode in ("vllm", "vllm_eager"):
        res = run_vllm(n, lo, hi, mode == "vllm_eager", large, dec, workdir)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    pathlib.Path(out).write_text(json.dumps(res, indent=1))
    print("RESULT", json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
