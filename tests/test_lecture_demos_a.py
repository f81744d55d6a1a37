"""Unit tests of optcourse.lecture_demos_a (fast; no timing assertions)."""

import json

import numpy as np
import pytest
import torch

from optcourse import lecture_demos_a as d


def test_fake_quant_error_shrinks_with_bits_and_is_exact_on_grid():
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    errors = [d.relative_error(w, d.fake_quant(w, b)) for b in (2, 4, 6, 8)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.01
    grid = torch.arange(-127, 128, dtype=torch.float32) * 0.5  # values already on the INT8 grid
    assert torch.equal(d.fake_quant(grid, 8), grid)


def test_per_channel_beats_per_tensor_when_channel_ranges_differ():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(16, 64, generator=gen) * torch.logspace(-2, 0, 16)[:, None]
    assert d.sqnr_db(w, d.fake_quant(w, 8, axis=0)) > d.sqnr_db(w, d.fake_quant(w, 8)) + 5


def test_affine_keeps_zero_exact_and_beats_symmetric_on_one_sided_data():
    x = torch.relu(torch.randn(4096, generator=torch.Generator().manual_seed(2)))
    affine = d.fake_quant(x, 8, symmetric=False)
    assert torch.all(affine[x == 0] == 0)
    assert d.sqnr_db(x, affine) > d.sqnr_db(x, d.fake_quant(x, 8))
    with pytest.raises(ValueError):
        d.fake_quant(x, 8, symmetric=False, amax=1.0)


def test_groupwise_matches_manual_and_rejects_bad_group():
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(3))
    q = d.quantize_groupwise(w, bits=4, group_size=4)
    manual = torch.cat([d.fake_quant(w[:, :4], 4, axis=0), d.fake_quant(w[:, 4:], 4, axis=0)], dim=1)
    assert torch.allclose(q, manual)
    with pytest.raises(ValueError):
        d.quantize_groupwise(w, group_size=3)


def test_calibration_thresholds_order_with_outliers():
    x = np.abs(np.random.default_rng(0).standard_normal(50_000))
    x[:3] = 50.0
    mx, pct, ent = d.max_threshold(x), d.percentile_threshold(x, 99.9), d.entropy_threshold(x, stride=4)
    assert mx == 50.0
    assert 2.5 < pct < 5.0 and 1.0 < ent < 10.0 and ent < mx


def test_float_roundtrip_fp8_saturates_and_bf16_is_coarser_than_fp16():
    x = torch.tensor([1000.0, 1.0 + 2 ** -9])
    fp8 = d.float_roundtrip(x, torch.float8_e4m3fn)
    assert fp8[0] == 448.0
    assert d.float_roundtrip(x, torch.float16)[1] == x[1]
    assert d.float_roundtrip(x, torch.bfloat16)[1] == 1.0


def test_awq_search_never_worse_than_rtn_and_helps_with_salient_channels():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(32, 64, generator=gen)
    x = torch.randn(256, 64, generator=gen)
    x[:, :4] *= 30  # a few salient input channels, as in LLM activations
    res = d.awq_search(w, x, bits=3, group_size=32)
    assert res["errors"][0] == res["rtn_error"] and res["awq_error"] <= res["rtn_error"]
    assert res["awq_error"] < 0.9 * res["rtn_error"] and res["best_alpha"] > 0


def test_roofline_costs():
    conv = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
    cost = d.conv2d_cost(conv, (2, 8, 32, 32))
    assert cost["output_shape"] == (2, 16, 16, 16)
    assert cost["flops"] == 2 * 2 * 16 * 16 * 16 * 8 * 9
    assert cost["intensity"] == cost["flops"] / cost["bytes"]
    small, big = d.matmul_cost(1, 512, 512), d.matmul_cost(256, 512, 512)
    assert big["intensity"] > 50 * small["intensity"]


def test_digits_export_fusion_and_op_counts(tmp_path):
    pytest.importorskip("onnxruntime")
    raw = d.export_digits_onnx(tmp_path / "raw.onnx", fold_batchnorm=False)
    folded = d.export_digits_onnx(tmp_path / "folded.onnx", fold_batchnorm=True)
    assert d.op_counts(raw)["BatchNormalization"] == 9 and d.op_counts(folded)["BatchNormalization"] == 0
    basic = d.ort_optimize(raw, tmp_path / "basic.onnx", "basic")
    assert d.op_counts(basic)["BatchNormalization"] == 0
    assert sum(d.op_counts(basic).values()) < sum(d.op_counts(raw).values())
    with pytest.raises(ValueError):
        d.ort_level("maximum")


def test_profile_op_summary(tmp_path):
    events = [{"cat": "Node", "name": "conv1_kernel_time", "dur": 30, "args": {"op_name": "Conv"}},
              {"cat": "Node", "name": "conv2_kernel_time", "dur": 50, "args": {"op_name": "Conv"}},
              {"cat": "Node", "name": "relu_kernel_time", "dur": 20, "args": {"op_name": "Relu"}},
              {"cat": "Node", "name": "relu_fence_before", "dur": 999, "args": {"op_name": "Relu"}},
              {"cat": "Session", "name": "model_run", "dur": 500}]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    rows = d.profile_op_summary(path)
    assert rows[0] == {"op": "Conv", "calls": 2, "total_us": 80.0, "share": 0.8}
    assert rows[1]["op"] == "Relu" and rows[1]["calls"] == 1
