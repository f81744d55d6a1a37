"""The timing core, tested with a fake clock: deterministic, and no assertion depends on real speed."""
import json

import numpy as np
import pytest

from optcourse.measure import bench


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def work(self, ms):
        def fn():
            self.now += ms / 1e3
        return fn


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", fake)
    return fake


def test_stats_percentiles_match_numpy():
    samples = [5.0, 1.0, 3.0, 2.0, 4.0, 100.0]
    st = bench.Stats(samples)
    assert st.median == 3.5
    assert st.percentile(90) == pytest.approx(np.percentile(samples, 90))
    assert st.percentile(99) == pytest.approx(np.percentile(samples, 99))
    assert st.min == 1.0 and st.max == 100.0 and st.n == 6
    assert st.iqr == pytest.approx(np.percentile(samples, 75) - np.percentile(samples, 25))
    assert set(st.as_dict()) >= {"median_ms", "p90_ms", "p99_ms", "std_ms", "n"}


def test_measure_warms_up_then_times_each_call(clock):
    calls = []

    def fn():
        calls.append(clock.now)
        clock.now += 0.002

    st = bench.measure(fn, warmup=4, repeat=7, sync=False)
    assert len(calls) == 11
    assert st.n == 7
    assert st.median == pytest.approx(2.0)


def test_measure_synchronises_around_every_timed_call(clock, monkeypatch):
    events = []
    monkeypatch.setattr(bench, "cuda_synchronize", lambda: events.append("sync"))
    bench.measure(lambda: events.append("call"), warmup=1, repeat=3, sync=True)
    # the sync after warm-up, then call + sync for each timed call
    assert events == ["call", "sync", "call", "sync", "call", "sync", "call", "sync"]


def test_measure_min_time_keeps_repeating(clock):
    st = bench.measure(clock.work(10), warmup=0, repeat=2, sync=False, min_time_s=0.5)
    assert st.n == 50


def test_measure_rejects_zero_repeat():
    with pytest.raises(ValueError):
        bench.measure(lambda: None, repeat=0)


def test_measure_inner_times_back_to_back_calls_and_reports_the_mean(clock, monkeypatch):
    events, durations = [], iter([1.0, 3.0] * 20)

    def fn():
        events.append("call")
        clock.now += next(durations) / 1e3

    monkeypatch.setattr(bench, "cuda_synchronize", lambda: events.append("sync"))
    st = bench.measure(fn, warmup=1, repeat=3, inner=2)
    # warm-up is one sample's worth (2 calls); then 2 calls between syncs, never a sync inside a sample
    assert events == ["call", "call", "sync"] + ["call", "call", "sync"] * 3
    assert st.n == 3 and st.samples_ms == pytest.approx([2.0, 2.0, 2.0])  # per call: (1 + 3) / 2
    with pytest.raises(ValueError):
        bench.measure(fn, inner=0)


def test_compare_alternates_and_reports_ratio(clock):
    order = []

    def variant(name, ms):
        def fn():
            order.append(name)
            clock.now += ms / 1e3
        return fn

    cmp = bench.compare({"slow": variant("slow", 4), "fast": variant("fast", 1)}, rounds=4, repeat=2,
                        warmup=1, sync=False)
    assert cmp.speedup("slow", "fast") == pytest.approx(4.0)
    assert cmp.speedup("slow", "slow") == pytest.approx(1.0)
    timed = order[2:]  # after one warm-up call each
    rounds = [timed[i:i + 4] for i in range(0, len(timed), 4)]
    firsts = [r[0] for r in rounds]
    assert firsts == ["slow", "fast", "slow", "fast"], "each round must start from a different variant"
    rows = cmp.table(baseline="slow")
    assert rows[1]["variant"] == "fast" and rows[1]["speedup"] == pytest.approx(4.0)


def test_compare_ratio_is_per_round_so_drift_cancels(clock):
    # the machine gets 3x slower half-way: per-round ratios stay 2, a pooled median would not
    state = {"calls": 0}

    def drifting(ms):
        def fn():
            state["calls"] += 1
            factor = 1 if state["calls"] <= 24 else 3
            clock.now += ms * factor / 1e3
        return fn

    cmp = bench.compare({"a": drifting(2), "b": drifting(1)}, rounds=6, repeat=4, warmup=0, sync=False)
    assert cmp.speedup("a", "b") == pytest.approx(2.0)


def test_bootstrap_ci_contains_median():
    rng = np.random.default_rng(1)
    samples = list(rng.normal(10, 1, 200))
    lo, hi = bench.confidence_interval_median(samples)
    assert lo < np.median(samples) < hi
    assert hi - lo < 1.0


def test_pinned_threads_restores():
    import torch

    before = torch.get_num_threads()
    with bench.pinned_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_ort_session_rejects_unknown_level(tmp_path):
    with pytest.raises(ValueError, match="graph_optimization"):
        bench.ort_session(tmp_path / "m.onnx", graph_optimization="max")


def test_save_results_includes_system_and_stats(tmp_path):
    path = bench.save_results(tmp_path / "r" / "out.json", {"lat": bench.Stats([1.0, 2.0, 3.0]),
                                                            "x": np.float32(1.5)})
    data = json.loads(path.read_text())
    assert data["lat"]["median_ms"] == 2.0 and data["x"] == 1.5
    assert data["system"]["torch"] and data["system"]["timestamp"]


def test_throughput_and_geomean():
    assert bench.throughput(32, bench.Stats([10.0])) == pytest.approx(3200.0)
    assert bench.geometric_mean([1.0, 4.0]) == pytest.approx(2.0)
