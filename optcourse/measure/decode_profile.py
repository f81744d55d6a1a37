"""Where a decode step's time goes: ``torch.profiler`` over KV-cached decode steps of a causal LM (lecture 06, 1b).

- ``profile_decode``: a prefill, a few unprofiled warm-up steps, then ``steps`` decode steps under the profiler, each
  inside a named range (``record_function``), so that a trace shows the step boundaries and a table can be divided
  by the step's own time. CPU activity always; on a CUDA model the kernels too.
- ``operator_table``: one row per operator: calls, self CPU (and CUDA) milliseconds per step, and the share of the
  step's CPU time; plus the step's CPU milliseconds and the share of it spent outside any operator (Python, module
  calls).
- ``cpu_share``: the fraction of the step's CPU time a set of operators takes (their self time).
"""
from __future__ import annotations

STEP_RANGE = "decode_step"
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm")


def profile_decode(model, batch: int, *, context: int = 128, steps: int = 4, warmup: int = 2,
                   range_name: str = STEP_RANGE, seed: int = 0):
    """Profile ``steps`` greedy decode steps of ``model`` (a transformers causal LM) for ``batch`` sequences of
    ``context`` random prompt tokens, after the prefill and ``warmup`` unprofiled steps. Returns the finished
    ``torch.profiler.profile`` (``key_averages()``, ``export_chrome_trace(path)``; a path ending in ``.gz`` is
    compressed)."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from optcourse.techniques import decoding

    device = next(model.parameters()).device
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (batch, context), generator=gen).to(device)
    cache = decoding.new_kv_cache()

    def step(tokens):
        return model(tokens, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)

    with torch.no_grad():
        nxt = step(ids)
        for _ in range(warmup):
            nxt = step(nxt)
        if on_gpu:
            torch.cuda.synchronize(device)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                with record_function(range_name):
                    nxt = step(nxt)
            if on_gpu:
                torch.cuda.synchronize(device)
    return prof


def operator_table(prof, steps: int, *, range_name: str = STEP_RANGE) -> tuple[list[dict], float, float]:
    """(rows, step CPU ms, % of the step outside any operator) of a ``profile_decode`` profile.

    Each row: operator, calls per step, self CPU ms per step, self CUDA ms per step (0 without CUDA events), % of the
    step's CPU time (self CPU time over the named range's CPU time). Rows are sorted by self CUDA time when the
    profile has any, else by self CPU time. Nested calls are counted (``aten::linear`` calls ``aten::matmul``, which
    calls ``aten::mm``): self times do not double count, calls do."""
    events = prof.key_averages()
    # on a GPU the named range appears twice: the CPU range and its GPU annotation (device type CUDA, no CPU time)
    ranges = [e for e in events if e.key == range_name and e.cpu_time_total > 0]
    if not ranges:
        raise ValueError(f"no {range_name!r} range with CPU time in the profile: was it recorded by profile_decode?")
    step = ranges[0]
    step_cpu_us = step.cpu_time_total / steps
    rows = []
    for e in events:
        if e.key == range_name:
            continue
        self_cpu = e.self_cpu_time_total / steps
        rows.append({"operator": e.key, "calls per step": e.count / steps, "self CPU ms per step": self_cpu / 1e3,
                     "self CUDA ms per step": (getattr(e, "self_device_time_total", 0) or 0) / steps / 1e3,
                     "% of step CPU time": 100 * self_cpu / step_cpu_us})
    key = "self CUDA ms per step" if any(r["self CUDA ms per step"] > 0 for r in rows) else "self CPU ms per step"
    rows.sort(key=lambda r: r[key], reverse=True)
    return rows, step_cpu_us / 1e3, 100 * step.self_cpu_time_total / step.cpu_time_total


def cpu_share(rows: list[dict], operators) -> float:
    """Fraction of the step's CPU time that ``operators`` (names) take, from ``operator_table``'s rows."""
    names = set(operators)
    return sum(r["% of step CPU time"] for r in rows if r["operator"] in names) / 100
