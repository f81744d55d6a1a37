"""Engine configurations and latency SLOs: what lab 03's student chooses, checked before it reaches vLLM's
command line, and the one measurement of a configuration against an SLO that the notebook and the grader share.

A configuration is a handful of vLLM's scheduler and cache knobs (``EngineConfig``). It comes from a student's
notebook as JSON, so ``EngineConfig.from_dict`` accepts only the known keys with values of the right type and
range, and ``args()`` turns it into command-line flags (nothing else of the student's reaches the command).

``measure(...)`` starts vLLM's server with a configuration, warms it up, sends an **open-loop** Poisson load at the
SLO's rate (``measure.scenarios.poisson_arrivals``, ``loadgen.run_open_loop``), reads ``/metrics`` before and
after, and stops the server: ``ConfigRun`` with the load, its summary, the goodput (requests per second that met
the SLO) and the share of requests that met it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time
from typing import Sequence

from optcourse.serving import loadgen

MAX_CONFIG_BYTES = 4096


class ConfigError(ValueError):
    """The configuration cannot be served; the message says which knob and why."""


@dataclasses.dataclass(frozen=True)
class SLO:
    """A latency objective at an offered load: every request should see TTFT <= ``ttft_ms`` and TPOT <= ``tpot_ms``
    while requests arrive as a Poisson process at ``rate_per_s``; measured over ``requests`` requests asking for
    ``max_tokens`` tokens each. ``kv_budget_bytes`` is the memory the KV cache may use."""

    ttft_ms: float
    tpot_ms: float
    rate_per_s: float
    requests: int
    max_tokens: int
    kv_budget_bytes: int


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """vLLM's knobs a deployment chooses. ``None`` leaves vLLM's default."""

    max_num_seqs: int = 32                       # sequences scheduled together (the batch of one decode step)
    max_num_batched_tokens: int | None = None    # tokens per step (prefill chunks + decodes)
    enable_chunked_prefill: bool = True          # split long prompts across steps, mixed with decodes
    enable_prefix_caching: bool = True           # reuse the KV blocks of a prompt prefix seen before
    kv_cache_dtype: str = "auto"                 # "auto" (the model's dtype) or "fp8" (half of bf16's bytes)
    kv_cache_memory_bytes: int | None = None     # the KV cache's size (None: the lab's budget)

    KNOBS = {"max_num_seqs": (1, 1024), "max_num_batched_tokens": (16, 1 << 20),
             "kv_cache_memory_bytes": (1 << 20, 1 << 40)}
    DTYPES = ("auto", "fp8")

    @classmethod
    def from_dict(cls, values: dict) -> "EngineConfig":
        """Validate a configuration given as a dict (a notebook's choice, or JSON a grader reads)."""
        if not isinstance(values, dict):
            raise ConfigError(f"an engine configuration is a dict of knobs, got {type(values).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in values if k not in fields)
        if unknown:
            raise ConfigError(f"unknown engine knob(s) {unknown}; the knobs are {sorted(fields)}")
        for name, (low, high) in cls.KNOBS.items():
            if name not in values:
                continue
            value = values[name]
            if value is None:
                if name == "max_num_seqs":
                    raise ConfigError("max_num_seqs must be an int, not None")
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be an int from {low} to {high}, got {value!r}")
        for name in ("enable_chunked_prefill", "enable_prefix_caching"):
            if name in values and not isinstance(values[name], bool):
                raise ConfigError(f"{name} must be True or False, got {values[name]!r}")
        if values.get("kv_cache_dtype", "auto") not in cls.DTYPES:
            raise ConfigError(f"kv_cache_dtype must be one of {cls.DTYPES}, got {values.get('kv_cache_dtype')!r}")
        return cls(**values)

    def check(self, max_model_len: int, min_kv_bytes: int, kv_budget_bytes: int) -> None:
        """The rules vLLM (or the lab) would refuse the configuration by, as one clear error before a server
        starts: without chunked prefill a step must hold a whole prompt (``max_num_batched_tokens >=
        max_model_len``); the KV cache must hold one request of ``max_model_len`` tokens (``min_kv_bytes``) and
        stay within the budget."""
        if not self.enable_chunked_prefill and self.max_num_batched_tokens is not None \
                and self.max_num_batched_tokens < max_model_len:
            raise ConfigError(f"without chunked prefill max_num_batched_tokens ({self.max_num_batched_tokens}) must be "
                              f"at least max_model_len ({max_model_len}): a whole prompt is prefilled in one step")
        kv = self.kv_cache_memory_bytes
        if kv is not None and kv < min_kv_bytes:
            raise ConfigError(f"a KV cache of {kv:,} bytes cannot hold one request of {max_model_len} tokens "
                              f"({min_kv_bytes:,} bytes at this cache dtype): vLLM would refuse to start")
        if kv is not None and kv > kv_budget_bytes:
            raise ConfigError(f"kv_cache_memory_bytes {kv:,} is over the budget of {kv_budget_bytes:,} bytes")

    def args(self, default_kv_bytes: int) -> list[str]:
        """vLLM's command-line flags for this configuration."""
        args = ["--max-num-seqs", str(self.max_num_seqs),
                "--kv-cache-memory-bytes", str(self.kv_cache_memory_bytes or default_kv_bytes),
                "--kv-cache-dtype", self.kv_cache_dtype,
                "--enable-chunked-prefill" if self.enable_chunked_prefill else "--no-enable-chunked-prefill",
                "--enable-prefix-caching" if self.enable_prefix_caching else "--no-enable-prefix-caching"]
        if self.max_num_batched_tokens is not None:
            args += ["--max-num-batched-tokens", str(self.max_num_batched_tokens)]
        return args

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """A short digest naming this configuration (equal configurations, equal keys)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def save(config: dict | EngineConfig, path: str | os.PathLike) -> EngineConfig:
    """Validate and write a configuration as JSON (the artifact the grader reads)."""
    cfg = config if isinstance(config, EngineConfig) else EngineConfig.from_dict(config)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    return cfg


def load(data: bytes) -> EngineConfig:
    """A configuration from the bytes of its JSON file (untrusted: size-capped, validated)."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"the configuration file is over {MAX_CONFIG_BYTES} bytes")
    try:
        values = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"the configuration file is not JSON ({type(err).__name__})") from None
    return EngineConfig.from_dict(values)


PREEMPTIONS = "vllm:num_preemptions_total"


def _series_total(page: dict[str, float], name: str) -> float:
    """Sum of the Prometheus series named exactly ``name`` (every label set) on a parsed /metrics page."""
    return sum(v for k, v in page.items() if k.split("{")[0] == name)


@dataclasses.dataclass
class ConfigRun:
    """One configuration measured under an SLO's open-loop load."""

    config: EngineConfig
    load: loadgen.LoadResult
    goodput: float            # requests per second that met the SLO
    attainment: float         # share of the requests that met it
    summary: dict
    before: dict              # /metrics before the load (after warm-up) and after it
    after: dict
    startup_s: float
    gauges: list = dataclasses.field(default_factory=list)   # /metrics pages sampled during the load

    def preemptions(self) -> float:
        """Requests vLLM preempted during the load: its counter after minus before, over all label sets."""
        return _series_total(self.after, PREEMPTIONS) - _series_total(self.before, PREEMPTIONS)

    def as_dict(self) -> dict:
        return {"config": self.config.to_dict(), "goodput_req_s": self.goodput, "attainment": self.attainment,
                "preemptions": self.preemptions(), "startup_s": self.startup_s,
                **{k: self.summary[k] for k in ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms",
                                                "output_tokens_per_s", "completed", "failed")}}


def server_for(model: str | os.PathLike, config: EngineConfig, *, common_args: Sequence[str], default_kv_bytes: int,
               log_path: str | os.PathLike | None = None):
    """An unstarted ``VLLMServer`` of ``config``: the common arguments, then the configuration's own, with the KV
    cache sized by ``--kv-cache-memory-bytes`` (``config.args``) rather than the CPU build's whole-GiB variable."""
    from optcourse.serving.server import VLLMServer

    return VLLMServer(model, [*common_args, *config.args(default_kv_bytes)], kv_cache_space_gib=None, log_path=log_path)


def capacity(model: str | os.PathLike, config: EngineConfig, prompts: Sequence[str], max_tokens: int, *,
             common_args: Sequence[str], default_kv_bytes: int, requests: int = 64, rounds: int = 3,
             log_path: str | os.PathLike | None = None, server=None) -> float:
    """Requests per second ``config`` completes on this machine under a **closed** loop of ``config.max_num_seqs``
    clients (``requests`` requests of ``max_tokens`` tokens, after a warm-up): the median of ``rounds``. What an
    open-loop SLO's rate can be set against where the machine's speed is not known in advance
    (``deployment.RATE_SHARE``). ``server``: a started server of this configuration to use instead of a new one."""
    import statistics

    own = server is None
    if own:
        server = server_for(model, config, common_args=common_args, default_kv_bytes=default_kv_bytes,
                            log_path=log_path).start()
    try:
        clients = config.max_num_seqs
        loadgen.run_load(server.url, server.served_model_name, prompts, max_tokens=max_tokens,
                         concurrency=min(8, clients), num_requests=16, ignore_eos=True)
        rates = []
        for _ in range(rounds):
            run = loadgen.run_load(server.url, server.served_model_name, prompts, max_tokens=max_tokens,
                                   concurrency=min(clients, requests), num_requests=requests, ignore_eos=True)
            rates.append(sum(r.ok for r in run.results) / run.duration_s)
    finally:
        if own:
            server.stop()
    return statistics.median(rates)


def measure(model: str | os.PathLike, config: EngineConfig, slo: SLO, prompts: Sequence[str], *,
            common_args: Sequence[str], default_kv_bytes: int, seed: int = 0, warmup: int = 4,
            log_path: str | os.PathLike | None = None, progress: bool = False, server=None) -> ConfigRun:
    """Start vLLM with ``config`` (``server``: a started ``VLLMServer`` of this configuration to reuse instead),
    warm it up with ``warmup`` requests, send the SLO's open-loop Poisson load and read the result."""
    from optcourse.measure.scenarios import poisson_arrivals

    own = server is None
    t0 = time.time()
    if own:
        server = server_for(model, config, common_args=common_args, default_kv_bytes=default_kv_bytes,
                            log_path=log_path).start()
    startup = time.time() - t0
    try:
        loadgen.run_load(server.url, server.served_model_name, prompts, max_tokens=slo.max_tokens,
                         concurrency=min(4, warmup), num_requests=warmup, ignore_eos=True)
        before = server.metrics()
        with server.sampling(0.1) as gauges:
            load = loadgen.run_open_loop(server.url, server.served_model_name, prompts,
                                         poisson_arrivals(slo.rate_per_s, slo.requests, seed).tolist(),
                                         max_tokens=slo.max_tokens, ignore_eos=True, progress=progress)
        after = server.metrics()
    finally:
        if own:
            server.stop()
    good = loadgen.goodput(load.results, load.duration_s, slo.ttft_ms, slo.tpot_ms)
    met = sum(loadgen.meets_slo(r, slo.ttft_ms, slo.tpot_ms) for r in load.results) / len(load.results)
    return ConfigRun(config, load, good, met, loadgen.summarize(load.results, load.duration_s), before, after, startup,
                     gauges)
