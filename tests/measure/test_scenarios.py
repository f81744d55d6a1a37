"""optcourse.measure.scenarios: MLPerf-style scenarios and statistics (fast; no assertions on real timings)."""
import math

import numpy as np
import pytest

from optcourse.measure import scenarios
from optcourse.measure.bench import Stats


def test_poisson_arrivals_have_mean_gap_one_over_qps():
    arr = scenarios.poisson_arrivals(200.0, 20000, seed=1)
    gaps = np.diff(np.concatenate([[0.0], arr]))
    assert np.all(gaps > 0)
    assert gaps.mean() == pytest.approx(1 / 200.0, rel=0.03)
    # exponential gaps: std equals mean (a fixed-rate generator would have std 0)
    assert gaps.std() == pytest.approx(1 / 200.0, rel=0.05)
    assert len(arr) / arr[-1] == pytest.approx(200.0, rel=0.03)


def test_poisson_arrivals_reject_bad_rate_and_are_reproducible():
    with pytest.raises(ValueError):
        scenarios.poisson_arrivals(0, 10)
    assert np.array_equal(scenarios.poisson_arrivals(5, 10, seed=3), scenarios.poisson_arrivals(5, 10, seed=3))


def test_fifo_latencies_queue_by_hand():
    # arrivals 0, 1, 1.5; service 2 each: starts 0, 2, 4 -> finishes 2, 4, 6
    lat = scenarios.fifo_latencies([0.0, 1.0, 1.5], [2.0, 2.0, 2.0])
    assert lat.tolist() == [2.0, 3.0, 4.5]
    # two servers: starts 0, 1, 2 -> finishes 2, 3, 4
    lat2 = scenarios.fifo_latencies([0.0, 1.0, 1.5], [2.0, 2.0, 2.0], workers=2)
    assert lat2.tolist() == [2.0, 2.0, 2.5]
    with pytest.raises(ValueError):
        scenarios.fifo_latencies([0.0], [1.0, 2.0])


def test_simulated_server_matches_md1_queue_theory():
    # M/D/1 mean waiting time = rho * s / (2 (1 - rho)); at rho 0.5 and s = 1 ms: 0.5 ms wait
    res = scenarios.simulate_server([1.0], qps=500, latency_bound_ms=100, queries=40000, seed=0)
    assert res.latency.mean == pytest.approx(1.5, rel=0.05)
    assert res.valid and res.mode == "simulated"
    assert res.tail_ms == pytest.approx(res.latency.percentile(99))


def test_find_max_qps_is_below_saturation_and_meets_the_bound():
    service = [1.0] * 50 + [2.0] * 50  # mean 1.5 ms -> saturation at 666 QPS
    qps, tried = scenarios.find_max_qps(service, latency_bound_ms=10, queries=4000)
    assert 0 < qps < 1000 / 1.5
    assert scenarios.simulate_server(service, qps, 10, queries=4000).valid
    assert not scenarios.simulate_server(service, qps * 1.1, 10, queries=4000).valid
    assert tried and all(isinstance(t, scenarios.ServerResult) for t in tried)
    # a bound below the service time itself: no QPS meets it
    assert scenarios.find_max_qps(service, latency_bound_ms=0.5)[0] == 0.0
    # one slow sample in 60: the interpolated p99 of the samples meets the bound, but resampled runs
    # draw the slow one about 1.7 % of the time, so their p99 misses it: no QPS is valid
    lumpy = [1.0] * 59 + [100.0]
    assert np.percentile(lumpy, 99) < 50
    qps, tried = scenarios.find_max_qps(lumpy, latency_bound_ms=50, queries=3000)
    assert qps == 0.0 and not tried[0].valid


def test_run_server_with_a_fake_clock_counts_queueing_delay():
    t = [0.0]
    clock = lambda: t[0]  # noqa: E731

    def sleep(s):
        t[0] += s

    def fn():
        t[0] += 0.010  # 10 ms of service

    # 1000 QPS against a 10 ms server: the queue grows, latencies grow well past the service time
    res = scenarios.run_server(fn, qps=1000, latency_bound_ms=50, duration_s=0.2, warmup=0, sync=False,
                               clock=clock, sleep=sleep, spin_s=0.0)
    assert res.mode == "measured" and res.latency.n == 200
    assert res.latency.min >= 10.0 - 1e-9 and res.latency.max > 1000
    assert not res.valid
    # 10 QPS: the server is mostly idle; most latencies are the service time alone
    t[0] = 0.0
    res = scenarios.run_server(fn, qps=10, latency_bound_ms=50, duration_s=20, warmup=0, sync=False,
                               clock=clock, sleep=sleep, spin_s=0.0)
    assert res.valid and res.latency.n == 200
    assert res.latency.percentile(50) == pytest.approx(10.0, abs=1e-6) and res.latency.min == pytest.approx(10.0)


def test_run_server_for_real_is_bounded():
    res = scenarios.run_server(lambda: None, qps=2000, latency_bound_ms=5, duration_s=0.05, warmup=0, sync=False)
    assert res.latency.n == 100 and res.achieved_qps > 0


def test_single_stream_and_offline_shapes():
    calls = []
    ss = scenarios.single_stream(lambda: calls.append(1), queries=30, warmup=2, sync=False)
    assert ss.scenario == "SingleStream" and ss.latency.n == 30 and len(calls) == 32
    assert ss.p90_ms == pytest.approx(ss.latency.percentile(90))
    off = scenarios.offline(lambda: None, batch_size=16, repeat=5, warmup=0, sync=False)
    assert off.scenario == "Offline" and off.details["samples"] == 80 and off.throughput > 0
    assert set(off.as_dict()) >= {"scenario", "throughput", "p90_ms", "batch_size"}


def test_bootstrap_speedup_ci_brackets_the_true_ratio():
    rng = np.random.default_rng(0)
    a = 2.0 + rng.exponential(0.1, 300)
    b = 1.0 + rng.exponential(0.05, 300)
    point, lo, hi = scenarios.bootstrap_speedup_ci(a, b, n_boot=500)
    assert lo < point < hi and lo > 1.8 and hi < 2.2
    # identical distributions: the interval contains 1
    _, lo, hi = scenarios.bootstrap_speedup_ci(a, rng.permutation(a), n_boot=500)
    assert lo <= 1.0 <= hi


def test_mann_whitney_direction_and_effect_size():
    a = np.arange(100, 200, dtype=float)
    b = np.arange(0, 100, dtype=float)
    res = scenarios.mann_whitney(a, b)  # is B faster (smaller times)?
    assert res["p_value"] < 1e-10 and res["p_a_greater"] == pytest.approx(1.0)
    assert scenarios.mann_whitney(b, a)["p_value"] > 0.99


def test_cost_per_million():
    # 1000 requests/s at $3.60/h: 1M requests take 1000 s = 1/3.6 h -> $1
    assert scenarios.cost_per_million(1000, 3.6) == pytest.approx(1.0)
    assert scenarios.cost_per_million(2000, 3.6) == pytest.approx(0.5)
    assert math.isinf(scenarios.cost_per_million(0, 3.6))


def test_server_result_as_dict():
    res = scenarios.ServerResult(10.0, Stats([1.0, 2.0, 3.0]), 2.5, 99, "simulated")
    d = res.as_dict()
    assert d["valid"] is False and d["p99_ms"] == pytest.approx(np.percentile([1, 2, 3], 99))


def test_time_calls_warms_up_synchronises_and_stops_when_the_interval_is_tight():
    now = [0.0]
    pending = [0.0]
    calls = []

    def fn():  # an asynchronous device: work is queued, the first call costs 50 ms
        calls.append(1)
        pending[0] += 0.050 if len(calls) == 1 else 0.002

    def sync():
        now[0] += pending[0]
        pending[0] = 0.0

    samples = scenarios.time_calls(fn, sync=sync, warmup=3, min_repeat=10, clock=lambda: now[0])
    assert len(samples) == 10 and len(calls) == 13
    assert samples == pytest.approx([2.0] * 10)
    # never more than max_repeat samples, even when the interval never gets tight
    rng = np.random.default_rng(1)
    noisy = scenarios.time_calls(lambda: None, sync=lambda: now.__setitem__(0, now[0] + rng.exponential(0.01)),
                                 warmup=0, min_repeat=3, max_repeat=7, rel_ci=1e-9, clock=lambda: now[0])
    assert len(noisy) == 7


def test_model_scenarios_returns_the_lab04_dict():
    res = scenarios.model_scenarios("noop", lambda: sum(range(50)), lambda: sum(range(500)), 8, queries=20,
                                    offline_repeat=3, latency_bound_ms=50.0, server_queries=500)
    assert set(res) == {"model", "single_stream", "p90_ms", "offline_throughput", "max_qps", "service_ms"}
    assert res["model"] == "noop" and len(res["service_ms"]) == 20
    assert res["p90_ms"] == pytest.approx(np.percentile(res["service_ms"], 90))
    assert res["offline_throughput"] > 0
    assert res["max_qps"] == scenarios.find_max_qps(res["service_ms"], 50.0, percentile=99, queries=500)[0]


def test_technique_table_rows():
    from optcourse.measure.bench import Comparison

    comp = Comparison({"a": Stats([2.0, 4.0, 6.0]), "b": Stats([1.0, 1.0, 4.0])}, {"a": [2.0, 4.0, 6.0], "b": [1.0, 1.0, 4.0]})
    rows = {r["variant"]: r for r in scenarios.technique_table(comp, "a", 7.2)}
    assert list(rows) == ["a", "b"]
    assert rows["a"]["speedup"] == pytest.approx(1.0) and rows["b"]["speedup"] == pytest.approx(2.0)
    assert rows["b"]["p90_ms"] == pytest.approx(np.percentile([1, 1, 4], 90)) and rows["a"]["p50_ms"] == 4.0
    assert rows["a"]["throughput_rps"] == pytest.approx(250.0) and rows["a"]["cost_per_1M"] == pytest.approx(8.0)
