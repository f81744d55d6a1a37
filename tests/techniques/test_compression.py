"""Unit tests of optcourse.techniques.compression (seconds; no timings asserted)."""
import pytest
import torch

from optcourse.techniques import compression


def test_lora_starts_at_base_and_merges_exactly():
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 12)
    layer = compression.LoRALinear(base, r=4, alpha=8)
    x = torch.randn(5, 16)
    assert torch.allclose(layer(x), base(x))  # B = 0 at init
    with torch.no_grad():
        layer.lora_B.normal_()
    assert not torch.allclose(layer(x), base(x))
    assert torch.allclose(layer.merged()(x), layer(x), atol=1e-5)
    assert not base.weight.requires_grad and layer.lora_A.requires_grad


def test_apply_lora_freezes_and_counts():
    model = torch.nn.Sequential()
    model.add_module("q_proj", torch.nn.Linear(8, 8, bias=False))
    model.add_module("o_proj", torch.nn.Linear(8, 8, bias=False))
    wrapped = compression.apply_lora(model, ("q_proj",), r=2)
    assert wrapped == ["q_proj"]
    trainable, total = compression.count_parameters(model)
    assert trainable == 2 * 8 + 8 * 2 and total == 128 + trainable
    assert compression.merge_lora(model) == 1 and not any(isinstance(m, compression.LoRALinear) for m in model.modules())


def test_nf4_construction_matches_published_levels():
    assert torch.allclose(compression.nf4_codebook(), compression.NF4_LEVELS, atol=1e-4)


def test_nf4_beats_int4_on_normal_weights_and_double_quant_saves_bits():
    torch.manual_seed(0)
    w = torch.randn(256, 256) * 0.02
    err = {}
    for name, cb in (("nf4", compression.NF4_LEVELS), ("int4", compression.int4_codebook())):
        q = compression.quantize_nf4(w, 64, codebook=cb)
        assert q.codes.max() < len(cb)
        err[name] = (compression.dequantize_nf4(q) - w).pow(2).mean().item()
    assert err["nf4"] < err["int4"]
    q = compression.quantize_nf4(w, 64)
    dq = compression.quantize_nf4(w, 64, double_quant=True)
    assert q.bits_per_parameter == pytest.approx(4.5)
    assert dq.bits_per_parameter == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    assert (compression.dequantize_nf4(dq) - w).pow(2).mean().item() < 1.05 * err["nf4"]


def test_quantize_handles_ragged_sizes():
    w = torch.randn(7, 13)
    back = compression.dequantize_nf4(compression.quantize_nf4(w, 64))
    assert back.shape == w.shape and (back - w).abs().max() < 0.5 * w.abs().max()
