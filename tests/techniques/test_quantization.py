"""Unit tests of optcourse.techniques.quantization (the reference implementations of lab02_quantization)."""

import math

import pytest
import torch
from torch import nn

import optcourse.techniques.quantization as Q


def test_ranges():
    assert Q.qrange(8, signed=False) == (0, 255)
    assert Q.qrange(8, signed=True) == (-127, 127)
    assert Q.qrange(4, signed=False) == (0, 15)
    assert Q.qrange(4, signed=True) == (-7, 7)


def test_affine_round_trip_and_zero_point():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.7, 3.0])
    scale, zp = Q.affine_qparams(x, 8)
    assert torch.isclose(scale, torch.tensor(4.0 / 255))
    assert zp.item() == round(1.0 / (4.0 / 255))  # qmin - round(min / scale)
    q = Q.quantize(x, scale, zp, 0, 255)
    assert q.min() >= 0 and q.max() <= 255 and q[2] == zp  # zero is exact
    err = (Q.dequantize(q, scale, zp) - x).abs().max()
    assert err <= scale / 2 + 1e-6
    # a positive-only tensor still represents zero exactly: zero point 0
    _, zp_pos = Q.affine_qparams(torch.tensor([0.5, 2.0]), 8)
    assert zp_pos.item() == 0


def test_per_channel_is_along_the_axis():
    w = torch.randn(6, 5, 3, 3) * torch.arange(1, 7).float()[:, None, None, None]
    s0 = Q.symmetric_qparams(w, 8, axis=0)
    assert s0.shape == (6,)
    assert torch.allclose(s0, w.abs().amax(dim=(1, 2, 3)) / 127)
    s1 = Q.symmetric_qparams(w, 8, axis=1)
    assert s1.shape == (5,)
    scale, zp = Q.affine_qparams(w, 8, axis=0)
    q = Q.quantize(w, scale, zp, 0, 255, axis=0)
    back = Q.dequantize(q, scale, zp, axis=0)
    assert ((back - w).abs() <= scale[:, None, None, None] / 2 + 1e-6).all()
    # per-channel is more accurate than per-tensor for channels of different magnitude
    per_tensor = Q.fake_quantize(w, 4, symmetric=True)
    per_channel = Q.fake_quantize(w, 4, symmetric=True, axis=0)
    assert (per_channel - w).pow(2).mean() < (per_tensor - w).pow(2).mean()


def test_ste_passes_gradient_inside_and_clips_outside():
    x = torch.tensor([-3.0, -0.3, 0.0, 0.26, 3.0], requires_grad=True)
    scale = torch.tensor(0.1)
    y = Q.fake_quant_ste(x, scale, torch.tensor(0.0), -7, 7)
    assert torch.allclose(y, torch.tensor([-0.7, -0.3, 0.0, 0.3, 0.7]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))


def test_quantize_model_wraps_and_matches_float_at_high_bits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.rand(16, 1, 8, 8)
    assert Q.quantizable_layers(model) == ["0", "3"]
    q16 = Q.quantize_model(model, 16, 16, x)
    assert len(Q.wrappers(q16)) == 2
    assert torch.allclose(q16(x), model(x), atol=1e-3)
    q2 = Q.quantize_model(model, 2, 2, x)
    assert not torch.allclose(q2(x), model(x), atol=1e-3)
    mixed = Q.quantize_model(model, 2, None, layer_bits={"0": None})
    assert isinstance(mixed[0], nn.Conv2d) and isinstance(mixed[3], Q.QuantWrapper)
    # QAT: gradients reach the float weights through the fake quantizers
    loss = q2(x).pow(2).sum()
    loss.backward()
    assert q2[0].module.weight.grad is not None and q2[0].module.weight.grad.abs().sum() > 0


def test_sensitivity_scan_and_plan():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.randn(32, 4)
    ref = model(x)
    scores = Q.sensitivity_scan(model, lambda m: -(m(x) - ref).pow(2).mean().item(), bits=2)
    assert set(scores) == {"0", "2"} and all(v <= 0 for v in scores.values())
    plan = Q.mixed_precision_plan({"a": 0.9, "b": 0.5, "c": 0.7}, keep=1, low_bits=3)
    assert plan == {"b": 8, "c": 3, "a": 3}


def test_group_quantization_groups_are_row_chunks():
    torch.manual_seed(0)
    w = torch.randn(6, 16)
    w[2, 4] = 50.0  # an outlier affects only its own group: row 2, inputs 4..7
    q, scales, zeros = Q.quantize_groups(w, 4, group_size=4)
    assert q.shape == w.shape and q.dtype == torch.uint8 and q.max() <= 15
    assert scales.shape == zeros.shape == (6, 4)
    big = scales > 1.0
    assert big.sum() == 1 and big[2, 1]
    back = Q.dequantize_groups(q, scales, zeros)
    assert ((back - w).abs() <= scales.repeat_interleave(4, dim=1) / 2 + 1e-5).all()
    assert torch.equal(Q.unpack_int4(Q.pack_int4(q)), q)


def test_wqlinear_and_awq():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32, bias=False)
    x = torch.randn(256, 64) * torch.linspace(0.05, 5.0, 64)  # a few salient input channels
    wq = Q.WQLinear(lin, 4, 16)
    assert wq.qweight.shape == (32, 32) and wq.qweight.dtype == torch.uint8
    assert Q.module_bytes(wq) < 0.3 * Q.module_bytes(lin)
    rtn_err = (wq(x) - lin(x)).pow(2).mean()
    s, alpha, errors = Q.awq_search_scale(lin.weight, x, 4, 16, n_grid=10)
    assert len(errors) == 10 and min(errors) <= errors[0]
    assert torch.isclose(torch.tensor(errors[0]), rtn_err, rtol=1e-3)
    awq = Q.WQLinear(lin, 4, 16, input_scale=s)
    assert (awq(x) - lin(x)).pow(2).mean() <= rtn_err * 1.0001


def test_dtype_roundtrip():
    x = torch.tensor([1.0, 1e-3, 7e4])
    fp16 = Q.dtype_roundtrip_error(x, torch.float16)
    bf16 = Q.dtype_roundtrip_error(x, torch.bfloat16)
    assert fp16["overflow"] == 1 and bf16["overflow"] == 0
    assert bf16["max_rel_error"] > fp16["max_rel_error"] * 0 and bf16["max_rel_error"] < 2 ** -8


def test_round_through_rounds_weights_input_and_every_layer_output_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(32, 8)
    emulated = Q.round_through(model, torch.float16)
    with torch.no_grad():
        # by hand: every number the network sees is an FP16 number
        manual = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        manual.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
        h = manual[0](x.half().float()).half().float()
        want = manual[2](h.relu().half().float()).half().float()
        got = emulated(x)
        assert torch.equal(got, want)
        assert not torch.equal(got, model(x))                  # it does round
        assert model[0].weight.dtype == torch.float32 and not model._forward_hooks  # the original is untouched
        assert torch.equal(Q.round_through(model, torch.bfloat16)[0].weight, model[0].weight.bfloat16().float())


def test_sqnr_and_relative_error_agree_and_per_channel_beats_per_tensor():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(16, 64, generator=gen) * torch.logspace(-2, 0, 16)[:, None]
    assert Q.sqnr_db(w, Q.fake_quantize(w, 8, axis=0)) > Q.sqnr_db(w, Q.fake_quantize(w, 8)) + 5
    approx = Q.fake_quantize(w, 4)
    # SQNR is -20 log10 of the relative error
    assert Q.sqnr_db(w, approx) == pytest.approx(-20 * math.log10(Q.relative_error(w, approx)))
    assert Q.sqnr_db(w, w) == float("inf")


def test_float_roundtrip_fp8_saturates_and_bf16_is_coarser_than_fp16():
    x = torch.tensor([1000.0, 1.0 + 2 ** -9])
    assert Q.float_roundtrip(x, torch.float8_e4m3fn)[0] == 448.0
    assert Q.float_roundtrip(x, torch.float16)[1] == x[1]
    assert Q.float_roundtrip(x, torch.bfloat16)[1] == 1.0
    assert Q.float_roundtrip(x, torch.float8_e4m3fn, scale=1000 / 448)[0] == pytest.approx(1000.0)


def test_fp8_gemm_has_e4m3s_error_and_bf16_has_a_tenth_of_it():
    from optcourse.techniques.quantization import compare_fp8_gemm, to_fp8

    t = torch.tensor([[-3.0, 0.5], [1.5, 0.0]])
    values, scale = to_fp8(t)
    assert values.dtype == torch.float8_e4m3fn and float(scale) == pytest.approx(3.0 / 448)
    assert float(values.float().abs().max()) == 448.0          # the largest magnitude lands on the format's maximum
    r = compare_fp8_gemm(64, 128, 256, rounds=1, repeat=1)
    # 3 mantissa bits: a few percent on a K=256 product of normal operands; bf16's 7 bits: a few tenths of a percent
    assert 0.01 < r["fp8_rel_error"] < 0.06, r
    assert r["bf16_rel_error"] < r["fp8_rel_error"] / 5, r
    assert r["fp8_ms"] > 0 and r["bf16_ms"] > 0 and r["fp8_speedup"] == pytest.approx(r["bf16_ms"] / r["fp8_ms"], rel=0.5)


def _rel_output_error(w_q, w, x):
    return ((x @ (w_q - w).T).pow(2).mean() / (x @ w.T).pow(2).mean()).sqrt().item()


def _correlated_inputs(n, d, seed):
    """Inputs whose channels are correlated (a random mix of components of decaying size), as activations are."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen) / d ** 0.5
    return (torch.randn(n, d, generator=gen) * torch.logspace(0, -1, d)) @ mix


def test_gptq_beats_round_to_nearest_on_the_layer_outputs_at_equal_bits_and_group_size():
    torch.manual_seed(0)
    w = torch.randn(48, 128) * 0.05
    x = _correlated_inputs(4096, 128, seed=1)
    calib, fresh = x[:2048], x[2048:]  # fresh: inputs from the same distribution that GPTQ never saw
    for bits in (3, 4):
        q, scales, zeros = Q.gptq_quantize(w, Q.gptq_hessian(calib), bits, group_size=32, block_size=64)
        assert q.dtype == torch.uint8 and int(q.max()) <= 2 ** bits - 1 and scales.shape == zeros.shape == (48, 4)
        w_gptq, w_rtn = Q.dequantize_groups(q, scales, zeros), Q.dequantize_groups(*Q.quantize_groups(w, bits, 32))
        for inputs in (calib, fresh):  # measured about 0.6x of RTN's error on both
            assert _rel_output_error(w_gptq, w, inputs) < 0.75 * _rel_output_error(w_rtn, w, inputs), bits


def test_gptq_is_exact_on_a_weight_already_on_the_grid():
    torch.manual_seed(0)
    codes = torch.randint(0, 16, (16, 64), dtype=torch.uint8)
    codes[:, 0::8], codes[:, 1::8] = 0, 15  # every group of 8 spans the whole grid: its scale is recovered
    scales, zeros = torch.rand(16, 8) * 0.1 + 0.01, torch.randint(1, 15, (16, 8)).float()
    w = Q.dequantize_groups(codes, scales, zeros)
    q, s, z = Q.gptq_quantize(w, Q.gptq_hessian(_correlated_inputs(512, 64, seed=2)), 4, group_size=8, block_size=16)
    assert torch.equal(q, codes) and torch.equal(z, zeros)
    assert torch.allclose(Q.dequantize_groups(q, s, z), w, atol=1e-6)


def test_gptq_with_a_diagonal_hessian_is_round_to_nearest():
    torch.manual_seed(0)
    w = torch.randn(8, 32)
    q, scales, zeros = Q.gptq_quantize(w, torch.diag(torch.rand(32) + 0.5), 4, group_size=8)
    q_rtn, scales_rtn, zeros_rtn = Q.quantize_groups(w, 4, 8)
    assert torch.equal(q, q_rtn) and torch.allclose(scales, scales_rtn) and torch.equal(zeros, zeros_rtn)


def test_gptq_zeroes_input_channels_the_calibration_never_used_and_checks_shapes():
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    x[:, 3] = 0.0
    q, scales, zeros = Q.gptq_quantize(torch.randn(4, 16), Q.gptq_hessian(x), 4, group_size=8)
    assert torch.all(Q.dequantize_groups(q, scales, zeros)[:, 3] == 0)
    with pytest.raises(ValueError):
        Q.gptq_quantize(torch.randn(4, 12), torch.eye(12), 4, group_size=8)
    with pytest.raises(ValueError):
        Q.gptq_quantize(torch.randn(4, 16), torch.eye(8), 4, group_size=8)


def test_gptq_llama_quantizes_a_copy_block_by_block():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 64, (128,))
    gq = Q.gptq_llama(model, ids, bits=4, group_size=16, seq_len=32)
    rtn = Q.quantize_llama_rtn(model, bits=4, group_size=16)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    names = Q.llama_linear_names(model)
    assert len(names) == 14
    for n in names:
        w = gq.get_submodule(n).weight.detach()
        assert not torch.equal(w, before[f"{n}.weight"])
        # on a 4-bit grid of 16 levels per group of 16 inputs
        assert all(len(torch.unique(g)) <= 16 for g in w.reshape(-1, 16))
        assert torch.allclose(rtn.get_submodule(n).weight, Q.dequantize_groups(*Q.quantize_groups(before[f"{n}.weight"], 4, 16)))
