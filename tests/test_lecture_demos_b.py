"""Unit tests of optcourse.lecture_demos_b (seconds; no timings asserted)."""
import math

import pytest
import torch

from optcourse import lecture_demos_b as lb


def test_lora_starts_at_base_and_merges_exactly():
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 12)
    layer = lb.LoRALinear(base, r=4, alpha=8)
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
    wrapped = lb.apply_lora(model, ("q_proj",), r=2)
    assert wrapped == ["q_proj"]
    trainable, total = lb.count_parameters(model)
    assert trainable == 2 * 8 + 8 * 2 and total == 128 + trainable
    assert lb.merge_lora(model) == 1 and not any(isinstance(m, lb.LoRALinear) for m in model.modules())


def test_nf4_construction_matches_published_levels():
    assert torch.allclose(lb.nf4_codebook(), lb.NF4_LEVELS, atol=1e-4)


def test_nf4_beats_int4_on_normal_weights_and_double_quant_saves_bits():
    torch.manual_seed(0)
    w = torch.randn(256, 256) * 0.02
    err = {}
    for name, cb in (("nf4", lb.NF4_LEVELS), ("int4", lb.int4_codebook())):
        q = lb.quantize_nf4(w, 64, codebook=cb)
        assert q.codes.max() < len(cb)
        err[name] = (lb.dequantize_nf4(q) - w).pow(2).mean().item()
    assert err["nf4"] < err["int4"]
    q = lb.quantize_nf4(w, 64)
    dq = lb.quantize_nf4(w, 64, double_quant=True)
    assert q.bits_per_parameter == pytest.approx(4.5)
    assert dq.bits_per_parameter == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    assert (lb.dequantize_nf4(dq) - w).pow(2).mean().item() < 1.05 * err["nf4"]


def test_quantize_handles_ragged_sizes():
    w = torch.randn(7, 13)
    back = lb.dequantize_nf4(lb.quantize_nf4(w, 64))
    assert back.shape == w.shape and (back - w).abs().max() < 0.5 * w.abs().max()


@pytest.fixture(scope="module")
def tiny_models():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    target = LlamaForCausalLM(cfg).eval()
    draft = LlamaForCausalLM(LlamaConfig(**{**cfg.to_dict(), "num_hidden_layers": 1})).eval()
    return target, draft


@pytest.mark.parametrize("k", [1, 3, 5])
def test_speculative_greedy_equals_target_greedy(tiny_models, k):
    target, draft = tiny_models
    prompt = [1, 5, 9, 13, 2]
    ref = lb.greedy_decode(target, prompt, 30)
    res = lb.speculative_greedy(target, draft, prompt, 30, k=k)
    assert res.tokens == ref
    assert res.rounds <= 30 and res.drafted == k * res.rounds
    # the target itself as draft accepts everything: k + 1 tokens per verification pass
    res_self = lb.speculative_greedy(target, target, prompt, 30, k=k)
    assert res_self.tokens == ref and res_self.acceptance_rate == 1.0


def test_prompt_lookup_proposer_and_speculation_with_it(tiny_models):
    propose = lb.prompt_lookup_proposer(max_ngram=2)
    assert propose([1, 2, 3, 4, 9, 1, 2], 3) == [3, 4, 9]
    assert propose([1, 2, 3, 4, 9, 7, 2], 2) == [3, 4]  # falls back to a 1-gram
    assert propose([5, 6, 7], 4) == []
    target, _ = tiny_models
    prompt = [1, 5, 9, 13, 1, 5, 9, 13, 1, 5]
    res = lb.speculative_greedy(target, propose, prompt, 30, k=4)
    assert res.tokens == lb.greedy_decode(target, prompt, 30) and res.draft_forwards == 0


def test_crop_cache():
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 10, 4), torch.zeros(1, 2, 10, 4), 0)
    lb.crop_cache(cache, 12)
    assert cache.get_seq_length() == 10
    lb.crop_cache(cache, 7)
    assert cache.get_seq_length() == 7


def test_expected_speedup_formula():
    assert lb.expected_speedup(0.0, 4, 0.0) == pytest.approx(1.0)
    assert lb.expected_speedup(1.0, 4, 0.0) == pytest.approx(5.0)
    assert lb.expected_speedup(0.8, 4, 0.1) == pytest.approx((1 - 0.8 ** 5) / 0.2 / 1.4)


def test_speculative_sampling_preserves_target_distribution():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])
    samples = lb.speculative_sample(p, q, 200_000, g)
    freq = torch.bincount(samples, minlength=4).float() / len(samples)
    assert (freq - p).abs().sum() / 2 < 0.01
    assert (freq - q).abs().sum() / 2 > 0.3


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,m", [(100, 100), (37, 90)])
def test_tiled_attention_matches_naive_and_sdpa(causal, n, m):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, n, 16), torch.randn(2, 3, m, 16), torch.randn(2, 3, m, 16)
    ref = lb.naive_attention(q, k, v, causal=causal)
    out = lb.tiled_attention(q, k, v, block_q=32, block_k=24, causal=causal)
    assert torch.allclose(out, ref, atol=1e-5)
    if n == m:
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        assert torch.allclose(out, sdpa, atol=1e-5)
