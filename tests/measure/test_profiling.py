"""optcourse.measure.profiling: operator profiles, NVML reporting, roofline arithmetic (fast, no timing asserts)."""
import pytest
import torch
from torch import nn

from optcourse.measure import profiling


def test_conv2d_cost_by_hand():
    # 3x3 conv, 4 -> 8 channels, 10x10 input, padding 1: output 8x10x10
    c = profiling.conv2d_cost(4, 8, 3, (10, 10), padding=1)
    assert c["output_shape"] == (1, 8, 10, 10)
    assert c["flops"] == 2 * 8 * 10 * 10 * 4 * 3 * 3
    assert c["bytes"] == 4 * (4 * 10 * 10 + 8 * 4 * 3 * 3 + 8 * 10 * 10)
    assert c["intensity"] == pytest.approx(c["flops"] / c["bytes"])
    # stride 2 halves each spatial side; batch multiplies activations, not weights
    c2 = profiling.conv2d_cost(4, 8, 3, (10, 10), padding=1, stride=2, batch=3)
    assert c2["output_shape"] == (3, 8, 5, 5)
    assert c2["bytes"] == 4 * (3 * 4 * 100 + 8 * 4 * 9 + 3 * 8 * 25)


def test_layer_cost_reads_torch_layers():
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
    assert profiling.layer_cost(conv, (2, 16, 32, 32)) == profiling.conv2d_cost(16, 32, 3, (32, 32), batch=2,
                                                                                 stride=2, padding=1)
    lin = nn.Linear(128, 10)
    c = profiling.layer_cost(lin, (4, 128))
    assert c["flops"] == 2 * 4 * 128 * 10 + 4 * 10
    assert c["bytes"] == 4 * (4 * 128 + 128 * 10 + 10 + 4 * 10)
    with pytest.raises(TypeError):
        profiling.layer_cost(nn.ReLU(), (1, 2))


def test_roofline_bound_and_efficiency():
    # 1 GFLOP and 1 GB on a 100 GFLOP/s, 10 GB/s machine: memory-bound, 100 ms
    r = profiling.roofline(1e9, 1e9, peak_gflops=100, peak_gbps=10, measured_ms=200)
    assert r["bound"] == "memory" and r["bound_ms"] == pytest.approx(100)
    assert r["ridge"] == pytest.approx(10) and r["intensity"] == pytest.approx(1)
    assert r["efficiency"] == pytest.approx(0.5) and r["achieved_gflops"] == pytest.approx(5)
    r = profiling.roofline(1e11, 1e9, peak_gflops=100, peak_gbps=10)
    assert r["bound"] == "compute" and r["bound_ms"] == pytest.approx(1000)


def test_top_operators_finds_the_convolution():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16 * 16, 10))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        rows = profiling.top_operators(lambda: model(x), n=5, repeat=2, warmup=1, cuda=False)
    names = [r["name"] for r in rows]
    assert len(rows) <= 5 and any("conv" in n for n in names)
    assert all(r["self_cpu_ms"] >= 0 and 0 <= r["share"] <= 1 for r in rows)
    assert rows == sorted(rows, key=lambda r: r["self_cpu_ms"], reverse=True)


def test_ort_top_operators(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 8, 8),), str(path), input_names=["x"], dynamo=False)
    rows = profiling.ort_top_operators(
        lambda opts: ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"]),
        {"x": torch.randn(1, 3, 8, 8).numpy()}, repeat=3)
    # which op costs most is timing (ORT may add layout ops such as ReorderOutput around a tiny conv, and
    # one slow call can put them first): check what does not depend on the clock
    conv = [r for r in rows if r["name"] in {"Conv", "FusedConv"}]
    assert len(conv) == 1 and conv[0]["calls"] == pytest.approx(1.0)  # one conv per run, warm-up runs left out
    assert rows == sorted(rows, key=lambda r: r["self_cpu_ms"], reverse=True)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)


def test_nvml_says_plainly_when_absent(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pynvml(name, *args, **kwargs):
        if name == "pynvml":
            raise ImportError("no pynvml")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    ok, reason = profiling.nvml_status()
    assert not ok and "nvidia-ml-py" in reason
    assert profiling.gpu_snapshot() == {"available": False, "reason": reason}
    with profiling.NvmlSampler() as sampler:
        pass
    assert sampler.summary() == {"available": False, "reason": reason}


def test_machine_peaks_are_positive():
    p = profiling.machine_peaks("cpu", matmul_n=64, copy_mib=1, repeat=2)
    assert p["peak_gflops"] > 0 and p["peak_gbps"] > 0 and p["dtype"] == "float32"


def test_machine_peaks_multiplies_in_the_dtype_asked(monkeypatch):
    import torch

    seen = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: seen.append((a.dtype, b.dtype, a.shape)) or real_mm(a, b))
    p = profiling.machine_peaks("cpu", matmul_n=32, copy_mib=1, repeat=2, dtype=torch.bfloat16)
    assert p["dtype"] == "bfloat16" and p["matmul_n"] == 32
    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16, (32, 32))}


def test_device_cache_bytes_reads_the_cpu_cache_or_the_gpu_l2(monkeypatch):
    import types

    import torch

    from optcourse.core import hardware

    monkeypatch.setattr(hardware, "last_level_cache_bytes", lambda: 105 << 20)
    assert profiling.device_cache_bytes("cpu") == 105 << 20
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: types.SimpleNamespace(L2_cache_size=50 << 20))
    assert profiling.device_cache_bytes("cuda") == 50 << 20
    assert profiling.device_cache_bytes("cuda:0") == 50 << 20


def test_streaming_out_features_makes_a_weight_three_caches_large():
    # the course machine: 32 MB L3, FP32: 3 x 32 MiB / (4096 x 4 bytes) = 6144 rows, a multiple of 256
    assert profiling.streaming_out_features(4096, 32 << 20) == 6144
    # an H200's 60 MiB L2 in BF16: 3 x 60 MiB / (4096 x 2) = 23040 rows
    n = profiling.streaming_out_features(4096, 60 << 20, bytes_per_element=2)
    assert n == 23040 and 4096 * n * 2 >= 3 * (60 << 20)
    # rounded up to the multiple, never below the minimum
    n = profiling.streaming_out_features(4096, (32 << 20) + 1)
    assert n % 256 == 0 and 4096 * n * 4 >= 3 * ((32 << 20) + 1) and 4096 * (n - 256) * 4 < 3 * ((32 << 20) + 1)
    assert profiling.streaming_out_features(4096, 1 << 20) == 3072
    with pytest.raises(ValueError):
        profiling.streaming_out_features(4096, 0)


def test_plot_roofline_draws():
    import matplotlib

    matplotlib.use("Agg")
    r = profiling.roofline(1e8, 1e7, 50, 10, measured_ms=20)
    ax = profiling.plot_roofline([{**r, "label": "conv"}], 50, 10)
    assert ax.get_xscale() == "log" and len(ax.lines) == 2


def test_model_layer_costs_sums_the_layers_a_forward_runs():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    rows = profiling.model_layer_costs(model, torch.zeros(2, 3, 6, 6))
    assert [r["name"] for r in rows] == ["0", "3"] and rows[0]["input_shape"] == (2, 3, 6, 6)
    assert rows[0]["flops"] == profiling.layer_cost(model[0], (2, 3, 6, 6))["flops"]
    assert rows[1]["flops"] == profiling.layer_cost(model[3], (2, 288))["flops"]
