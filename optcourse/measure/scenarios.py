"""MLPerf-style inference scenarios and statistical comparison of timings.

Scenarios (the MLPerf inference names, simplified to one process and one model):
- **SingleStream**: one query at a time, the next issued when the previous one finished; the
  figure of merit is the 90th-percentile latency (``single_stream``).
- **Offline**: all samples available at once, sent in batches; the figure of merit is throughput
  in samples per second (``offline``).
- **Server**: queries arrive as a Poisson process at a target rate (QPS); a run is valid when the
  chosen latency percentile (MLPerf: p99) stays under a bound; the figure of merit is the highest
  QPS that is still valid (``find_max_qps``). Arrivals are exponential inter-arrival gaps
  (``poisson_arrivals``); the queue is first-come-first-served with ``workers`` servers.
  ``simulate_server`` replays measured service times through that queue (fast, deterministic);
  ``run_server`` issues the queries for real against a callable, for a bounded duration.

Statistics:
- ``bootstrap_speedup_ci``: confidence interval of median(A) / median(B) by resampling both;
- ``mann_whitney``: is B faster than A? a rank test (scipy) that needs no normality;
- ``cost_per_million``: cost of 1M requests (or tokens) from a throughput and a price per hour.

Reference implementations of lab 04's tasks (the lab's given cells fall back on them when a task is
not written yet, and its tests use them for earlier tasks' results, so that one blank task costs only
its own points): ``time_calls`` (Task 2), ``model_scenarios`` (Task 4), ``technique_table`` (Task 5).

Timing itself is ``optcourse.measure.bench`` (warm-up, synchronisation, percentiles); this module only
arranges calls into scenarios.
"""
from __future__ import annotations

import dataclasses
import heapq
import math
import time
from typing import Callable, Sequence

import numpy as np

from optcourse.measure.bench import Comparison, Stats, cuda_synchronize, measure


# --------------------------------------------------------------------------------------- scenarios
@dataclasses.dataclass
class ScenarioResult:
    scenario: str
    latency: Stats | None = None          # per-query latency (ms)
    throughput: float | None = None       # samples (or queries) per second
    details: dict = dataclasses.field(default_factory=dict)

    @property
    def p90_ms(self) -> float:
        return self.latency.percentile(90)

    @property
    def p99_ms(self) -> float:
        return self.latency.percentile(99)

    def as_dict(self) -> dict:
        out = {"scenario": self.scenario, "throughput": self.throughput, **self.details}
        if self.latency is not None:
            out.update(self.latency.as_dict())
        return out


def single_stream(fn: Callable[[], object], *, queries: int = 200, warmup: int = 5, min_time_s: float = 0.0,
                  sync: bool = True, max_queries: int = 100_000) -> ScenarioResult:
    """SingleStream: ``queries`` sequential calls (at least ``min_time_s`` of them); p90 is the result."""
    st = measure(fn, warmup=warmup, repeat=queries, sync=sync, min_time_s=min_time_s, max_repeat=max_queries)
    return ScenarioResult("SingleStream", st, throughput=1e3 / st.mean,
                          details={"p90_ms": st.percentile(90), "queries": st.n})


def offline(fn_batch: Callable[[], object], batch_size: int, *, repeat: int = 10, warmup: int = 2,
            sync: bool = True) -> ScenarioResult:
    """Offline: time ``repeat`` calls of a batched ``fn_batch`` (``batch_size`` samples each).

    Throughput = total samples / total time (not from the median: Offline counts every second)."""
    st = measure(fn_batch, warmup=warmup, repeat=repeat, sync=sync)
    total_s = sum(st.samples_ms) / 1e3
    return ScenarioResult("Offline", st, throughput=batch_size * st.n / total_s,
                          details={"batch_size": batch_size, "samples": batch_size * st.n})


def poisson_arrivals(qps: float, n: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Arrival times (s, increasing, first > 0) of ``n`` queries of a Poisson process at ``qps`` per second.

    Inter-arrival gaps are exponential with mean 1/qps (numpy's ``scale`` is the mean, not the rate)."""
    if qps <= 0:
        raise ValueError("qps must be positive")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return np.cumsum(rng.exponential(scale=1.0 / qps, size=n))


def fifo_latencies(arrivals_s: Sequence[float], service_s: Sequence[float], workers: int = 1) -> np.ndarray:
    """Latency (s) of each query in a first-come-first-served queue with ``workers`` identical servers.

    Query i starts when it has arrived and a server is free; latency = finish - arrival (queueing
    plus service)."""
    arrivals = np.asarray(arrivals_s, dtype=float)
    service = np.asarray(service_s, dtype=float)
    if arrivals.shape != service.shape:
        raise ValueError("arrivals and service times must have the same length")
    free_at = [0.0] * max(1, workers)  # min-heap of times at which each server is free
    heapq.heapify(free_at)
    latencies = np.empty_like(arrivals)
    for i, (arrive, serve) in enumerate(zip(arrivals, service)):
        start = max(arrive, heapq.heappop(free_at))
        finish = start + serve
        heapq.heappush(free_at, finish)
        latencies[i] = finish - arrive
    return latencies


@dataclasses.dataclass
class ServerResult:
    qps: float
    latency: Stats
    latency_bound_ms: float
    percentile: float
    mode: str  # "simulated" or "measured"
    achieved_qps: float | None = None

    @property
    def tail_ms(self) -> float:
        return self.latency.percentile(self.percentile)

    @property
    def valid(self) -> bool:
        return self.tail_ms <= self.latency_bound_ms

    def as_dict(self) -> dict:
        return {"qps": self.qps, "mode": self.mode, f"p{self.percentile:g}_ms": self.tail_ms,
                "latency_bound_ms": self.latency_bound_ms, "valid": self.valid, "achieved_qps": self.achieved_qps,
                "p50_ms": self.latency.percentile(50), "queries": self.latency.n}


def simulate_server(service_ms: Sequence[float], qps: float, latency_bound_ms: float, *, queries: int = 5000,
                    percentile: float = 99, workers: int = 1, seed: int = 0) -> ServerResult:
    """Server scenario, simulated: Poisson arrivals at ``qps``; each query's service time is drawn
    (with replacement) from the measured ``service_ms``; FIFO queue with ``workers`` servers."""
    rng = np.random.default_rng(seed)
    arrivals = poisson_arrivals(qps, queries, rng)
    service = rng.choice(np.asarray(service_ms, dtype=float), size=queries, replace=True) / 1e3
    lat_ms = fifo_latencies(arrivals, service, workers) * 1e3
    return ServerResult(qps, Stats(lat_ms.tolist()), latency_bound_ms, percentile, "simulated",
                        achieved_qps=queries / float(arrivals[-1] + lat_ms[-1] / 1e3))


def run_server(fn: Callable[[], object], qps: float, latency_bound_ms: float, *, duration_s: float = 5.0,
               max_queries: int = 10_000, percentile: float = 99, seed: int = 0, sync: bool = True,
               warmup: int = 3, clock: Callable[[], float] = time.perf_counter,
               sleep: Callable[[float], None] = time.sleep, spin_s: float = 0.002) -> ServerResult:
    """Server scenario, for real: issue queries at Poisson times for about ``duration_s`` seconds.

    One server processes queries first-come-first-served: it sleeps until the next arrival when it
    is idle, and starts the next query at once when it is behind (the query waited in the queue).
    Latency = finish - scheduled arrival, so queueing delay counts, as MLPerf's LoadGen counts it.
    The last ``spin_s`` before an arrival are busy-waited: ``time.sleep`` overshoots by tens of
    microseconds, which at sub-millisecond gaps adds up to a queue that the model never caused."""
    for _ in range(warmup):
        fn()
    if sync:
        cuda_synchronize()
    n = max(1, min(max_queries, int(math.ceil(qps * duration_s))))
    arrivals = poisson_arrivals(qps, n, seed)
    latencies = []
    t0 = clock()
    for arrive in arrivals:
        while True:
            wait = arrive - (clock() - t0)
            if wait <= 0:
                break
            if wait > spin_s:
                sleep(wait - spin_s)
        fn()
        if sync:
            cuda_synchronize()
        latencies.append((clock() - t0 - arrive) * 1e3)
    elapsed = clock() - t0
    return ServerResult(qps, Stats(latencies), latency_bound_ms, percentile, "measured", achieved_qps=n / elapsed)


def find_max_qps(service_ms: Sequence[float], latency_bound_ms: float, *, percentile: float = 99,
                 queries: int = 5000, workers: int = 1, seed: int = 0, tolerance: float = 0.02,
                 max_steps: int = 40) -> tuple[float, list[ServerResult]]:
    """Highest QPS whose simulated ``percentile`` latency stays under the bound (bisection).

    The search brackets between 0.1 % of the saturation rate and the saturation rate (``workers`` /
    mean service time, where the queue grows without bound) and stops when the bracket is within
    ``tolerance`` (relative). Every run uses the same seed, so latency grows monotonically with the
    QPS and the answer is reproducible. Returns the QPS (0.0 when even the lightest load misses the
    bound) and every run tried (for a plot)."""
    service = np.asarray(service_ms, dtype=float)
    hi = workers / (float(service.mean()) / 1e3)
    # almost no load (0.1 % of saturation): latency = service time alone, resampled as the runs are.
    # If that misses the bound no QPS meets it (a bound below the slowest samples' p99).
    lo = hi * 1e-3
    floor = simulate_server(service, lo, latency_bound_ms, queries=queries, percentile=percentile,
                            workers=workers, seed=seed)
    tried: list[ServerResult] = [floor]
    if not floor.valid:
        return 0.0, tried
    for _ in range(max_steps):
        if (hi - lo) / hi < tolerance:
            break
        mid = (lo + hi) / 2
        res = simulate_server(service, mid, latency_bound_ms, queries=queries, percentile=percentile,
                              workers=workers, seed=seed)
        tried.append(res)
        if res.valid:
            lo = mid
        else:
            hi = mid
    return lo, tried


# ------------------------------------------------------------------------------------- statistics
def bootstrap_speedup_ci(a_ms: Sequence[float], b_ms: Sequence[float], *, confidence: float = 0.95,
                         n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Speedup of B over A = median(A) / median(B), with a percentile-bootstrap confidence interval.

    A and B are resampled independently (they are separate sets of timings). Returns
    ``(point, low, high)``; an interval above 1 says B is faster at this confidence."""
    a = np.asarray(a_ms, dtype=float)
    b = np.asarray(b_ms, dtype=float)
    rng = np.random.default_rng(seed)
    ma = np.median(rng.choice(a, size=(n_boot, a.size), replace=True), axis=1)
    mb = np.median(rng.choice(b, size=(n_boot, b.size), replace=True), axis=1)
    ratios = ma / mb
    alpha = (1 - confidence) / 2
    return (float(np.median(a) / np.median(b)), float(np.quantile(ratios, alpha)),
            float(np.quantile(ratios, 1 - alpha)))


def mann_whitney(a_ms: Sequence[float], b_ms: Sequence[float], alternative: str = "greater") -> dict:
    """Mann-Whitney U test of A's timings against B's (scipy). ``alternative="greater"`` asks
    "are A's times larger, i.e. is B faster?". Returns U, the p-value and the effect size
    P(a > b) (the common-language effect size: 0.5 = no difference)."""
    from scipy.stats import mannwhitneyu

    a = np.asarray(a_ms, dtype=float)
    b = np.asarray(b_ms, dtype=float)
    res = mannwhitneyu(a, b, alternative=alternative)
    return {"u": float(res.statistic), "p_value": float(res.pvalue), "p_a_greater": float(res.statistic) / (a.size * b.size),
            "alternative": alternative, "n_a": int(a.size), "n_b": int(b.size)}


def cost_per_million(throughput_per_s: float, price_per_hour: float) -> float:
    """Cost of 1,000,000 requests (or tokens) at ``throughput_per_s`` on a machine at ``price_per_hour``."""
    if throughput_per_s <= 0:
        return math.inf
    return price_per_hour / 3600.0 / throughput_per_s * 1e6


# ------------------------------------------------------------------- lab 04 reference implementations
def time_calls(fn: Callable[[], object], sync: Callable[[], object] = lambda: None, warmup: int = 3,
               min_repeat: int = 10, max_repeat: int = 1000, rel_ci: float = 0.05,
               clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Per-call times (ms) of ``fn()``: ``warmup`` untimed calls and ``sync()``, then each call timed as
    ``clock(); fn(); sync(); clock()`` until there are ``min_repeat`` samples and the 95 % confidence
    interval of the mean is tight (1.96 s / sqrt(n) <= rel_ci * mean, s with ddof=1), or ``max_repeat``."""
    for _ in range(warmup):
        fn()
    sync()
    samples: list[float] = []
    while len(samples) < max_repeat:
        t0 = clock()
        fn()
        sync()
        samples.append((clock() - t0) * 1e3)
        if len(samples) >= max(min_repeat, 2):
            mean = float(np.mean(samples))
            if 1.96 * float(np.std(samples, ddof=1)) / math.sqrt(len(samples)) <= rel_ci * mean:
                break
    return samples


def model_scenarios(name: str, fn_single: Callable[[], object], fn_batch: Callable[[], object], batch_size: int, *,
                    queries: int, offline_repeat: int, latency_bound_ms: float, server_queries: int,
                    warmup: int = 5, offline_warmup: int = 1) -> dict:
    """SingleStream, Offline and the simulated Server scenario (highest QPS whose p99 meets the bound)
    for one model: ``{"model", "single_stream", "p90_ms", "offline_throughput", "max_qps", "service_ms"}``."""
    ss = single_stream(fn_single, queries=queries, warmup=warmup)
    off = offline(fn_batch, batch_size, repeat=offline_repeat, warmup=offline_warmup)
    max_qps, _ = find_max_qps(ss.latency.samples_ms, latency_bound_ms, percentile=99, queries=server_queries)
    return {"model": name, "single_stream": ss, "p90_ms": ss.p90_ms, "offline_throughput": off.throughput,
            "max_qps": max_qps, "service_ms": ss.latency.samples_ms}


def technique_table(comparison: Comparison, baseline: str, price_per_hour: float) -> list[dict]:
    """One row per variant of ``comparison`` (in its order): ``variant``, ``p50_ms``, ``p90_ms`` (of all
    samples), ``speedup`` over ``baseline`` (median of per-round ratios), ``throughput_rps`` (one stream:
    1000 / mean latency in ms) and ``cost_per_1M`` at ``price_per_hour``."""
    rows = []
    for name, st in comparison.stats.items():
        throughput = 1e3 / st.mean
        rows.append({"variant": name, "p50_ms": st.percentile(50), "p90_ms": st.percentile(90),
                     "speedup": comparison.speedup(baseline, name), "throughput_rps": throughput,
                     "cost_per_1M": cost_per_million(throughput, price_per_hour)})
    return rows
