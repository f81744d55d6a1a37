"""A streaming load generator for an OpenAI-compatible ``/v1/completions`` endpoint (vLLM's server).

Each request is sent with ``stream=True`` and timed token by token on the client, the way
``vllm bench serve`` and MLPerf's server scenario measure an LLM service:

- TTFT (time to first token): request sent -> first streamed chunk with text;
- ITL (inter-token latencies): the gaps between successive streamed chunks (one list per request);
- TPOT (time per output token): ``(E2E - TTFT) / (output_tokens - 1)``, the decode speed one user sees;
- E2E latency: request sent -> last chunk;
- output tokens/s: all output tokens of the run / wall time of the run;
- goodput: requests per second that met a latency SLO (TTFT and TPOT bounds, per request).

Two kinds of load: closed loop (``run_load``: ``concurrency`` clients, each sends its next request when its
previous one finished, so a slow server slows the load down and hides its queue) and open loop
(``run_open_loop``: requests sent at given arrival times, e.g. a Poisson process, whether or not the
server keeps up, as users do; the only kind on which a latency SLO means anything).

Bounded and local by construction: a fixed number of requests (``num_requests``) or a wall-time
limit (``time_limit_s``), whichever comes first, a socket timeout on every request, and only
loopback addresses (the course never loads a remote service). Threads, not asyncio, so that it
works the same inside a Jupyter kernel (which already runs an event loop) and in a script.
"""
from __future__ import annotations

import dataclasses
import http.client
import ipaddress
import json
import math
import queue
import socket
import threading
import time
import urllib.parse
from typing import Sequence

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclasses.dataclass
class RequestResult:
    """What the client saw of one streamed request (times in seconds)."""

    index: int
    ok: bool
    start_s: float = 0.0            # when it was sent, relative to the start of the run
    ttft_s: float = math.nan
    e2e_s: float = math.nan
    itl_s: list[float] = dataclasses.field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None
    text: str = ""
    error: str = ""

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first; NaN with fewer than two tokens."""
        if not self.ok or self.output_tokens < 2:
            return math.nan
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


@dataclasses.dataclass
class LoadResult:
    results: list[RequestResult]
    duration_s: float
    concurrency: int | None                 # closed loop: the number of clients; open loop: None
    arrivals_s: list[float] | None = None   # open loop: when each request was due, from the start of the run

    @property
    def open_loop(self) -> bool:
        return self.arrivals_s is not None

    @property
    def offered_rate(self) -> float:
        """Open loop: the requests per second the arrival schedule offered (NaN for a closed loop)."""
        if not self.arrivals_s:
            return math.nan
        return len(self.arrivals_s) / self.arrivals_s[-1] if self.arrivals_s[-1] > 0 else math.inf

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.results if r.ok]

    def summary(self) -> dict:
        return summarize(self.results, self.duration_s, concurrency=self.concurrency)


def check_loopback(url: str) -> urllib.parse.SplitResult:
    """Parse ``url`` and refuse anything but a loopback host (127.0.0.0/8, ::1, localhost)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError
        except ValueError:
            raise ValueError(f"the load generator only talks to loopback addresses, not {host!r}") from None
    if parts.scheme != "http":
        raise ValueError(f"only http:// URLs on loopback are supported, not {url!r}")
    return parts


def stream_completion(url: str, model: str, prompt: str | list[int], max_tokens: int, *, index: int = 0,
                      timeout_s: float = 120.0, run_start: float | None = None, **extra) -> RequestResult:
    """Send one streaming completion and time every chunk.

    ``extra`` goes into the request body (e.g. ``ignore_eos=True`` so every request produces exactly
    ``max_tokens`` tokens, ``temperature=0``). Output tokens are counted from the server's final usage
    chunk (``stream_options.include_usage``) when it sends one, else one per streamed text chunk.
    """
    parts = check_loopback(url)
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": 0.0, **extra}
    result = RequestResult(index=index, ok=False)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout_s)
    t0 = time.perf_counter()
    result.start_s = t0 - run_start if run_start is not None else 0.0
    chunks, texts, last = 0, [], None
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            result.error = f"HTTP {resp.status}: {resp.read()[:300].decode(errors='replace')}"
            return result
        for raw in resp:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            usage = event.get("usage")
            if usage:
                result.output_tokens = int(usage.get("completion_tokens") or 0)
                result.prompt_tokens = usage.get("prompt_tokens")
            choices = event.get("choices") or []
            text = "".join(c.get("text") or "" for c in choices)
            if not choices:
                continue
            now = time.perf_counter()
            if last is None:
                result.ttft_s = now - t0
            else:
                result.itl_s.append(now - last)
            last = now
            chunks += 1
            texts.append(text)
        if last is None:
            result.error = "the stream ended without a token"
            return result
        result.e2e_s = last - t0
        result.text = "".join(texts)
        if result.output_tokens == 0:
            result.output_tokens = chunks
        result.ok = True
    except (OSError, socket.timeout, http.client.HTTPException, json.JSONDecodeError) as err:
        result.error = f"{type(err).__name__}: {err}"
    finally:
        conn.close()
    return result


def run_load(url: str, model: str, prompts: Sequence[str | list[int]], *, max_tokens: int | Sequence[int] = 64,
             concurrency: int = 8, num_requests: int | None = None, time_limit_s: float = 120.0,
             timeout_s: float = 120.0, progress: bool = False, **extra) -> LoadResult:
    """Send ``num_requests`` streaming requests (default: one per prompt, cycling through ``prompts``)
    with at most ``concurrency`` in flight (closed loop: each worker sends its next request when its
    previous one finished). No new request starts after ``time_limit_s``.

    ``max_tokens`` is one limit for every request, or one per request (request ``i`` takes
    ``max_tokens[i % len(max_tokens)]``): real traffic asks for outputs of varied lengths."""
    check_loopback(url)
    limits, num_requests = _check_load("run_load", prompts, max_tokens, num_requests, concurrency=concurrency)
    todo: queue.Queue[int] = queue.Queue()
    for i in range(num_requests):
        todo.put(i)
    sender = _Sender(url, model, prompts, limits, timeout_s, extra,
                     num_requests if progress else 0, f"requests (concurrency {concurrency})")
    deadline = sender.start + time_limit_s

    def worker():
        while time.perf_counter() < deadline:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            sender.send(i)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(concurrency, num_requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=time_limit_s + timeout_s + 5)
    results, duration = sender.finish()
    return LoadResult(results, duration, concurrency)


def run_open_loop(url: str, model: str, prompts: Sequence[str | list[int]], arrivals_s: Sequence[float], *,
                  max_tokens: int | Sequence[int] = 64, timeout_s: float = 120.0, progress: bool = False,
                  **extra) -> LoadResult:
    """Open loop: request ``i`` is sent at ``arrivals_s[i]`` seconds after the start (e.g.
    ``measure.scenarios.poisson_arrivals(rate, n, seed)``), whether or not earlier ones have finished, so a server
    that falls behind builds a queue that shows in TTFT. One thread per request in flight; ``prompts`` and
    ``max_tokens`` cycle as in ``run_load``. The result's ``duration_s`` runs from the start to the last reply."""
    check_loopback(url)
    arrivals = [float(a) for a in arrivals_s]
    if any(not math.isfinite(a) or a < 0 for a in arrivals) or arrivals != sorted(arrivals):
        raise ValueError("arrivals_s must be finite, non-negative and increasing (seconds from the start)")
    limits, num_requests = _check_load("run_open_loop", prompts, max_tokens, len(arrivals))
    if num_requests == 0:
        raise ValueError("run_open_loop needs at least one arrival")
    sender = _Sender(url, model, prompts, limits, timeout_s, extra, num_requests if progress else 0,
                     f"requests (open loop, {num_requests / max(arrivals[-1], 1e-9):.1f}/s)")
    threads = []
    start = sender.start
    for i, due in enumerate(arrivals):
        wait = start + due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        t = threading.Thread(target=sender.send, args=(i,), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(timeout=max(0.0, start + arrivals[-1] + timeout_s + 5 - time.perf_counter()))
    results, duration = sender.finish()
    return LoadResult(results, duration, None, arrivals)


def run_sweep(url: str, model: str, prompts: Sequence[str | list[int]], rates: Sequence[float], duration_s: float, *,
              max_tokens: int | Sequence[int] = 64, seed: int = 0, progress: bool = False, **extra) -> list[LoadResult]:
    """An open-loop request-rate sweep: for each rate (requests/s, in the order given) ``max(1, round(rate *
    duration_s))`` requests arriving as a Poisson process (``measure.scenarios.poisson_arrivals(rate, n, seed)``),
    sent by ``run_open_loop``; one ``LoadResult`` per rate."""
    from optcourse.measure.scenarios import poisson_arrivals

    loads = []
    for rate in rates:
        n = max(1, round(rate * duration_s))
        loads.append(run_open_loop(url, model, prompts, poisson_arrivals(rate, n, seed).tolist(),
                                   max_tokens=max_tokens, progress=progress, **extra))
    return loads


def meets_slo(r: RequestResult, ttft_ms: float, tpot_ms: float) -> bool:
    """A request meets the SLO when it succeeded, its TTFT is at most ``ttft_ms`` and its TPOT at most ``tpot_ms``
    (a request of one token has no TPOT: only its TTFT counts)."""
    if not r.ok or r.ttft_s * 1e3 > ttft_ms:
        return False
    return r.output_tokens < 2 or r.tpot_s * 1e3 <= tpot_ms


def goodput(results: Sequence[RequestResult], duration_s: float, ttft_ms: float, tpot_ms: float) -> float:
    """Requests per second that met the SLO (``meets_slo``): the throughput a service can sell."""
    return sum(meets_slo(r, ttft_ms, tpot_ms) for r in results) / duration_s


class _Sender:
    """Sends request ``i`` of a load from any thread and collects what came back (with a progress bar of ``total``
    requests when ``total``); the run's clock starts when it is made."""

    def __init__(self, url, model, prompts, limits, timeout_s, extra, total, desc):
        self.url, self.model, self.prompts, self.limits, self.timeout_s, self.extra = \
            url, model, prompts, limits, timeout_s, extra
        self.results: list[RequestResult] = []
        self.lock = threading.Lock()
        self.bar = None
        if total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False)
        self.start = time.perf_counter()

    def send(self, i: int) -> None:
        r = stream_completion(self.url, self.model, self.prompts[i % len(self.prompts)], self.limits[i % len(self.limits)],
                              index=i, timeout_s=self.timeout_s, run_start=self.start, **self.extra)
        with self.lock:
            self.results.append(r)
            if self.bar is not None:
                self.bar.update(1)

    def finish(self) -> tuple[list[RequestResult], float]:
        """The results in request order and the run's wall time so far."""
        duration = time.perf_counter() - self.start
        if self.bar is not None:
            self.bar.close()
        with self.lock:
            return sorted(self.results, key=lambda r: r.index), duration


def _check_load(caller: str, prompts: Sequence, max_tokens: int | Sequence[int], num_requests: int | None,
                **at_least_one: int) -> tuple[list[int], int]:
    """Validate a load's arguments; returns the per-request token limits and the number of requests."""
    for name, value in at_least_one.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1")
    if not prompts:
        raise ValueError(f"{caller} needs at least one prompt")
    limits = [int(max_tokens)] if isinstance(max_tokens, (int, np.integer)) else [int(m) for m in max_tokens]
    if not limits or min(limits) < 1:
        raise ValueError(f"max_tokens must be a positive int or a non-empty list of them, got {max_tokens!r}")
    return limits, len(prompts) if num_requests is None else int(num_requests)


@dataclasses.dataclass
class StaticBatchResult:
    """One pass of static batching over a list of requests."""

    useful_tokens: int        # what the requests asked for: sum of their max_tokens
    generated_tokens: int     # what the batches computed: every row runs to its batch's longest request
    duration_s: float
    batches: int

    @property
    def output_tokens_per_s(self) -> float:
        """Tokens delivered to the requests per second (a padded row's extra tokens are thrown away)."""
        return self.useful_tokens / self.duration_s if self.duration_s > 0 else math.nan

    @property
    def slot_efficiency(self) -> float:
        """Share of the computed tokens that some request wanted (1.0 when all lengths in a batch agree)."""
        return self.useful_tokens / self.generated_tokens if self.generated_tokens else math.nan


def run_static_batches(model, prompts: Sequence[list[int]], max_tokens: int | Sequence[int], *,
                       batch_size: int = 16, pad_token_id: int = 0,
                       num_requests: int | None = None) -> StaticBatchResult:
    """Serve requests the way a server without continuous batching does: in arrival order, in batches
    of ``batch_size`` (left-padded), each batch ``model.generate``-d until its longest request has its
    ``max_tokens`` (EOS ignored, as ``ignore_eos`` does for vLLM). A request that wanted fewer tokens
    keeps its slot until the batch ends, and no waiting request can take it. Request ``i`` is
    ``prompts[i % len(prompts)]`` with ``max_tokens[i % len(max_tokens)]``, as in ``run_load``."""
    import torch

    limits, num_requests = _check_load("run_static_batches", prompts, max_tokens, num_requests, batch_size=batch_size)
    device = next(model.parameters()).device
    useful = generated = batches = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, num_requests, batch_size):
            ids = [list(prompts[i % len(prompts)]) for i in range(first, min(first + batch_size, num_requests))]
            wants = [limits[i % len(limits)] for i in range(first, first + len(ids))]
            width = max(len(x) for x in ids)
            input_ids = torch.tensor([[pad_token_id] * (width - len(x)) + x for x in ids], device=device)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
            steps = max(wants)
            out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=steps,
                                 min_new_tokens=steps, do_sample=False, pad_token_id=pad_token_id)
            if out.shape[1] - width != steps:
                raise RuntimeError(f"generate produced {out.shape[1] - width} tokens, {steps} were asked for")
            useful, generated, batches = useful + sum(wants), generated + steps * len(ids), batches + 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return StaticBatchResult(useful, generated, time.perf_counter() - start, batches)


def percentiles(values: Sequence[float], qs: Sequence[float] = PERCENTILES) -> dict[str, float]:
    """``{"p50": ..., "p90": ..., "p99": ..., "mean": ...}`` of the finite values (NaN when none)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return {**{f"p{q:g}": math.nan for q in qs}, "mean": math.nan}
    return {**{f"p{q:g}": float(np.percentile(arr, q)) for q in qs}, "mean": float(arr.mean())}


def summarize(results: Sequence[RequestResult], duration_s: float, concurrency: int | None = None) -> dict:
    """The reference summary of a load run (milliseconds for latencies).

    TTFT, TPOT and E2E percentiles are over requests; ITL percentiles over every gap of every
    request (all ITL lists concatenated), as ``vllm bench serve`` reports them.
    """
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    summary = {"completed": len(ok), "failed": len(results) - len(ok), "duration_s": duration_s,
               "output_tokens": out_tokens,
               "output_tokens_per_s": out_tokens / duration_s if duration_s > 0 else math.nan,
               "requests_per_s": len(ok) / duration_s if duration_s > 0 else math.nan}
    if concurrency is not None:
        summary["concurrency"] = concurrency
    series = {"ttft": [r.ttft_s for r in ok], "tpot": [r.tpot_s for r in ok],
              "itl": [g for r in ok for g in r.itl_s], "e2e": [r.e2e_s for r in ok]}
    for name, values in series.items():
        for key, value in percentiles(values).items():
            summary[f"{name}_{key}_ms"] = value * 1e3
    return summary


def run_generate_batch(model, prompts: Sequence[list[int]], *, max_tokens: int = 64, concurrency: int = 8,
                       num_requests: int | None = None) -> LoadResult:
    """The same load as ``run_load``, served in-process by transformers' continuous batching
    (``model.generate_batch``): the real serving path where vLLM is not installed.

    All ``num_requests`` token-id prompts are queued at once and the engine runs at most
    ``concurrency`` of them per step (``max_requests_per_batch``): ``concurrency`` closed-loop clients
    whose queue is the engine's. Per-token timestamps give TTFT (from when a request was scheduled,
    as a client of ``run_load`` sends it when a slot frees), ITL and E2E. Every request generates
    exactly ``max_tokens`` tokens (EOS ignored, as ``ignore_eos`` does for vLLM).
    """
    from transformers.generation import ContinuousBatchingConfig, GenerationConfig

    limits, num_requests = _check_load("run_generate_batch", prompts, max_tokens, num_requests, concurrency=concurrency)
    if len(limits) != 1:
        raise ValueError("run_generate_batch takes one max_tokens for every request (generate_batch has one "
                         "max_new_tokens)")
    inputs = [list(prompts[i % len(prompts)]) for i in range(num_requests)]
    generation = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    batching = ContinuousBatchingConfig(max_requests_per_batch=concurrency)
    outputs = model.generate_batch(inputs, generation_config=generation, continuous_batching_config=batching,
                                   record_timestamps=True, progress_bar=False)
    # the run's clock: first request scheduled -> last token (the engine's warm-up, like a server's start, is not load)
    served = [o for o in outputs.values() if not o.error and o.timestamps]
    start = min((o.lifespan[0] for o in served), default=0.0)
    duration = max((o.timestamps[-1] for o in served), default=start) - start
    results = []
    for i in range(num_requests):
        out = outputs.get(f"req_{i}")        # generate_batch names the requests req_<index>
        if out is None or out.error or not out.timestamps:
            results.append(RequestResult(index=i, ok=False, error=str(getattr(out, "error", "no output"))))
            continue
        begun, stamps = out.lifespan[0], out.timestamps
        results.append(RequestResult(index=i, ok=True, start_s=begun - start, ttft_s=stamps[0] - begun,
                                     itl_s=np.diff(stamps).tolist(), e2e_s=stamps[-1] - begun,
                                     output_tokens=len(out.generated_tokens), prompt_tokens=len(inputs[i])))
    return LoadResult(results, duration, concurrency)
