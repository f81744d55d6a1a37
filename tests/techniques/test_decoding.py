"""Unit tests of optcourse.techniques.decoding (seconds; no timings asserted)."""

import pytest
import torch

from optcourse.techniques import decoding


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
    ref = decoding.greedy_decode(target, prompt, 30)
    res = decoding.speculative_greedy(target, draft, prompt, 30, k=k)
    assert res.tokens == ref
    assert res.rounds <= 30 and res.drafted == k * res.rounds
    # the target itself as draft accepts everything: k + 1 tokens per verification pass
    res_self = decoding.speculative_greedy(target, target, prompt, 30, k=k)
    assert res_self.tokens == ref and res_self.acceptance_rate == 1.0


def test_prompt_lookup_proposer_and_speculation_with_it(tiny_models):
    propose = decoding.prompt_lookup_proposer(max_ngram=2)
    assert propose([1, 2, 3, 4, 9, 1, 2], 3) == [3, 4, 9]
    assert propose([1, 2, 3, 4, 9, 7, 2], 2) == [3, 4]  # falls back to a 1-gram
    assert propose([5, 6, 7], 4) == []
    target, _ = tiny_models
    prompt = [1, 5, 9, 13, 1, 5, 9, 13, 1, 5]
    res = decoding.speculative_greedy(target, propose, prompt, 30, k=4)
    assert res.tokens == decoding.greedy_decode(target, prompt, 30) and res.draft_forwards == 0


def test_crop_cache():
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 10, 4), torch.zeros(1, 2, 10, 4), 0)
    decoding.crop_cache(cache, 12)
    assert cache.get_seq_length() == 10
    decoding.crop_cache(cache, 7)
    assert cache.get_seq_length() == 7


def test_expected_speedup_formula():
    assert decoding.expected_speedup(0.0, 4, 0.0) == pytest.approx(1.0)
    assert decoding.expected_speedup(1.0, 4, 0.0) == pytest.approx(5.0)
    assert decoding.expected_speedup(0.8, 4, 0.1) == pytest.approx((1 - 0.8 ** 5) / 0.2 / 1.4)
    # a verification pass dearer than one decode step lowers the gain: the same tokens over more time
    assert decoding.expected_speedup(0.8, 4, 0.1, verify=1.5) == pytest.approx((1 - 0.8 ** 5) / 0.2 / 1.9)


@pytest.mark.parametrize("k,c,verify", [(4, 0.1, 1.0), (4, 0.5, 1.2), (2, 0.3, 1.0), (8, 0.05, 1.3)])
def test_break_even_acceptance_is_where_speculation_stops_paying(k, c, verify):
    alpha = decoding.break_even_acceptance(k, c, verify)
    assert 0 < alpha < 1
    assert decoding.expected_speedup(alpha, k, c, verify) == pytest.approx(1.0, abs=1e-6)
    assert decoding.expected_speedup(alpha - 0.01, k, c, verify) < 1 < decoding.expected_speedup(alpha + 0.01, k, c, verify)
    # a free draft with a one-step verification pays at any acceptance; a draft dearer than the whole gain never does
    assert decoding.break_even_acceptance(4, 0.0) == pytest.approx(0.0, abs=1e-9)
    assert decoding.break_even_acceptance(4, 1.0) == 1.0


def test_speculative_sampling_preserves_target_distribution():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])
    samples = decoding.speculative_sample(p, q, 200_000, g)
    freq = torch.bincount(samples, minlength=4).float() / len(samples)
    assert (freq - p).abs().sum() / 2 < 0.01
    assert (freq - q).abs().sum() / 2 > 0.3


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,m", [(100, 100), (37, 90)])
def test_tiled_attention_matches_naive_and_sdpa(causal, n, m):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, n, 16), torch.randn(2, 3, m, 16), torch.randn(2, 3, m, 16)
    ref = decoding.naive_attention(q, k, v, causal=causal)
    out = decoding.tiled_attention(q, k, v, block_q=32, block_k=24, causal=causal)
    assert torch.allclose(out, ref, atol=1e-5)
    if n == m:
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        assert torch.allclose(out, sdpa, atol=1e-5)


def test_attention_peak_memory_sees_the_score_matrix_of_math_and_not_of_flash():
    """Measured per call in a fresh process: math holds the n x n scores (at least one fp32 matrix), flash only
    tiles; measuring flash after math (the order that hid flash's peak behind math's in one process) changes
    nothing."""
    import numpy as np

    n = 1024
    scores = 4 * n * n * 4                           # heads 4, fp32
    ballast = np.ones(100_000_000)   # 800 MB in this process: a child's ru_maxrss would start above the math peak
    math_peak = decoding.attention_peak_bytes(n, "math")
    flash_peak = decoding.attention_peak_bytes(n, "flash")
    assert math_peak >= 0.9 * scores, (math_peak, scores)
    assert flash_peak <= 0.5 * scores, (flash_peak, scores)
    del ballast
    with pytest.raises(ValueError, match="backend"):
        decoding.attention_peak_bytes(n, "xformers")
