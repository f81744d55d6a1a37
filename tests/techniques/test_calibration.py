"""The reference calibration (optcourse.techniques.calibration): thresholds, histograms, KL search, collection."""
import numpy as np
import pytest
import torch

from optcourse.techniques import calibration as cal


def test_absmax_per_tensor_and_per_channel():
    x = np.array([[0.5, -3.0], [2.0, 1.0]])
    assert cal.absmax_threshold(x) == 3.0
    assert np.allclose(cal.absmax_threshold(x, axis=0), [3.0, 2.0])  # axis kept: one value per row
    assert np.allclose(cal.absmax_threshold(x, axis=1), [2.0, 3.0])
    w = np.random.default_rng(0).normal(size=(8, 4, 3, 3))
    assert np.allclose(cal.absmax_threshold(w, axis=0), np.abs(w).reshape(8, -1).max(1))


def test_percentile_matches_numpy_and_respects_the_percentile():
    rng = np.random.default_rng(1)
    x = rng.laplace(size=(6, 500))
    assert np.isclose(cal.percentile_threshold(x, 99.0), np.percentile(np.abs(x), 99.0))
    assert np.allclose(cal.percentile_threshold(x, 90.0, axis=0), np.percentile(np.abs(x), 90.0, axis=1))
    assert cal.percentile_threshold(x, 90.0) < cal.percentile_threshold(x, 99.9) <= cal.absmax_threshold(x)
    with pytest.raises(ValueError):
        cal.percentile_threshold(x, 0)


def test_scale_and_fake_quantization():
    assert cal.scale_from_threshold(12.7) == pytest.approx(0.1)
    x = np.array([-1.0, 0.04, 0.26, 50.0])
    assert np.allclose(cal.quantize_dequantize(x, 0.1), [-1.0, 0.0, 0.3, 12.7])  # clipped at 127 steps


def test_abs_histogram_skips_exact_zeros():
    x = np.array([0.0, 0.0, 0.0, -1.0, 0.5, 1.0])
    hist, edges = cal.abs_histogram(x, num_bins=4)
    assert hist.sum() == 3 and edges[0] == 0 and edges[-1] == 1.0
    hist, _ = cal.abs_histogram(x, num_bins=4, skip_zeros=False)
    assert hist.sum() == 6


def _entropy_slow(hist, edges, nq):
    """A loop-by-loop transcription of the documented algorithm, independent of the vectorised one."""
    n = len(hist)
    best = (np.inf, n)
    for i in range(nq, n + 1):
        p = list(hist[:i])
        p[-1] += sum(hist[i:])
        merged = i // nq
        q = [0.0] * i
        for j in range(nq):
            start = j * merged
            stop = i if j == nq - 1 else start + merged
            total = sum(hist[start:stop])
            nonzero = [k for k in range(start, stop) if hist[k] > 0]
            for k in nonzero:
                q[k] = total / len(nonzero)
        ps, qs = sum(p), sum(q)
        kl = sum((pk / ps) * np.log((pk / ps) / max(qk / qs, 1e-12)) for pk, qk in zip(p, q) if pk > 0)
        if kl < best[0]:
            best = (kl, i)
    return edges[best[1]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_threshold_matches_a_slow_transcription(seed):
    rng = np.random.default_rng(seed)
    n = 200
    hist = np.round(rng.uniform(20, 100, n) * np.exp(-np.arange(n) / rng.uniform(20, 80)))
    edges = np.linspace(0, 2.0, n + 1)
    assert cal.entropy_threshold(hist, edges, 32) == pytest.approx(_entropy_slow(hist, edges, 32))


def test_entropy_clips_outliers_and_keeps_uniform_ranges():
    rng = np.random.default_rng(0)
    h, e = cal.abs_histogram(np.concatenate([rng.normal(size=50_000), [40.0]]), num_bins=1024)
    assert 2.0 < cal.entropy_threshold(h, e) < 20.0
    h, e = cal.abs_histogram(rng.uniform(-1, 1, 20_000), num_bins=512)
    assert cal.entropy_threshold(h, e) > 0.9
    assert cal.entropy_threshold(np.ones(64), np.linspace(0, 1, 65), 128) == 1.0  # fewer bins than levels


def test_histogram_percentile():
    hist = np.array([50.0, 30.0, 19.0, 1.0])
    edges = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    assert cal.histogram_percentile_threshold(hist, edges, 50) == 1.0
    assert cal.histogram_percentile_threshold(hist, edges, 99) == 3.0
    assert cal.histogram_percentile_threshold(hist, edges, 100) == 4.0


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from optcourse.techniques.export import export_onnx

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    path = export_onnx(model, (torch.zeros(2, 1, 8, 8),), tmp_path_factory.mktemp("cal") / "tiny.onnx", ["x"], ["y"],
                       {"x": {0: "batch"}, "y": {0: "batch"}})
    return model, path


def test_collect_activation_stats_sees_the_real_ranges(tiny_onnx):
    model, path = tiny_onnx
    rng = np.random.default_rng(0)
    batches = [{"x": rng.normal(size=(4, 1, 8, 8)).astype(np.float32)} for _ in range(3)]
    names = cal.activation_tensor_names(path)
    assert names[0] == "x" and "y" in names and len(names) == 4  # input, conv, relu, conv
    stats = cal.collect_activation_stats(path, batches, num_bins=64, sample_size=1000)
    with torch.no_grad():
        y = np.concatenate([model(torch.from_numpy(b["x"])).numpy() for b in batches])
    assert stats["y"].min == pytest.approx(y.min(), rel=1e-5) and stats["y"].max == pytest.approx(y.max(), rel=1e-5)
    assert stats["y"].hist.sum() == np.count_nonzero(y) and stats["y"].edges[-1] == pytest.approx(np.abs(y).max(), rel=1e-5)
    relu = [n for n in names if "Relu" in n][0]
    assert stats[relu].min == 0.0 and stats[relu].hist.sum() < stats[relu].count  # zeros left out
    assert 0 < len(stats["x"].sample) <= 1000
    for method in ("absmax", "percentile", "entropy"):
        th = cal.thresholds_from_stats(stats, method)
        assert set(th) == set(names) and all(0 < v <= stats[n].absmax + 1e-6 for n, v in th.items())
    with pytest.raises(ValueError):
        cal.thresholds_from_stats(stats, "mse")


def test_entropy_kl_curve_and_acceptable_answers():
    rng = np.random.default_rng(3)
    hist, edges = cal.abs_histogram(np.concatenate([rng.laplace(size=20_000), [60.0]]), num_bins=512)
    kls = cal.entropy_kl_curve(hist, 128)
    assert kls.shape == (512 - 128 + 1,)
    best = cal.entropy_threshold(hist, edges, 128)
    assert best == edges[128 + int(np.argmin(kls))]
    assert cal.entropy_threshold_acceptable(best, hist, edges, 128)
    assert not cal.entropy_threshold_acceptable(edges[-1], hist, edges, 128)
    assert not cal.entropy_threshold_acceptable("not a number", hist, edges, 128)
    flat = np.full(256, 10.0)  # nothing to clip: the last cut (len(hist), inclusive) has KL 0
    e = np.linspace(0, 1, 257)
    assert cal.entropy_kl_curve(flat, 128)[-1] == 0.0 and cal.entropy_threshold(flat, e, 128) == 1.0
    assert cal.entropy_threshold_acceptable(1.0, flat, e, 128) and not cal.entropy_threshold_acceptable(e[-2], flat, e, 128)
    tie = np.zeros(256)  # two cuts with the same KL up to rounding: either is a correct answer
    tie[:128] = 1.0
    kt = cal.entropy_kl_curve(tie, 128)
    near = [128 + i for i in np.flatnonzero(kt <= kt.min() * (1 + 1e-12) + 1e-15)]
    assert all(cal.entropy_threshold_acceptable(e[i], tie, e, 128) for i in near)
