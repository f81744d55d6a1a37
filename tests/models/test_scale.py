"""Scale models (``optcourse.models.scale``): real Llama shapes from the repository's configs, random weights."""
import pytest
import torch

from optcourse.models import scale


def test_the_shapes_are_the_real_models_shapes():
    c8 = scale.llama_config("llama-3.1-8b")
    assert (c8.hidden_size, c8.num_hidden_layers, c8.num_attention_heads, c8.num_key_value_heads, c8.vocab_size) == \
        (4096, 32, 32, 8, 128256)
    # the parameter count of Llama-3.1-8B (8.03 B), from the shape alone (no weights made)
    d, f, L, v = c8.hidden_size, c8.intermediate_size, c8.num_hidden_layers, c8.vocab_size
    kv = c8.num_key_value_heads * c8.head_dim
    params = 2 * v * d + L * (2 * d * d + 2 * d * kv + 3 * d * f + 2 * d) + d
    assert 8.0e9 < params < 8.1e9
    assert scale.kv_bytes_per_token(c8) == 2 * 32 * 8 * 128 * 2  # 128 KiB per token in bf16
    assert scale.llama_config("llama-3.2-1b").tie_word_embeddings is True
    with pytest.raises(ValueError, match="unknown model shape"):
        scale.llama_config("llama-9000")


def test_a_random_model_of_the_small_shape_decodes_and_its_bound_is_consistent():
    model = scale.random_llama("cpu-small", dtype=torch.float32)
    cfg = model.config
    assert next(model.parameters()).dtype == torch.float32 and torch.get_default_dtype() == torch.float32
    weights = scale.weight_bytes(model)
    assert weights == 4 * sum(p.numel() for p in model.parameters())
    speed = scale.decode_speed(model, batch=2, context=16, steps=2, repeat=3, warmup=1)
    assert speed["tokens_per_s"] == pytest.approx(2 / speed["ms_per_step"] * 1e3)
    assert len(speed["samples_ms"]) == 3 and all(s > 0 for s in speed["samples_ms"])
    per_token = scale.kv_bytes_per_token(cfg, 4)
    bound = scale.decode_bound(weights, per_token, batch=2, context=16, bandwidth_bytes_per_s=1e10)
    assert bound == pytest.approx(2 / ((weights + 2 * 16 * per_token) / 1e10))
    # more context, more bytes per step; more batch, more tokens per weight read
    assert scale.decode_bound(weights, per_token, 2, 4096, 1e10) < bound < scale.decode_bound(weights, per_token, 8, 16, 1e10)


def test_random_weights_are_seeded():
    a = scale.random_llama("cpu-small", dtype=torch.float32, seed=1)
    b = scale.random_llama("cpu-small", dtype=torch.float32, seed=1)
    assert torch.equal(a.model.layers[0].mlp.up_proj.weight, b.model.layers[0].mlp.up_proj.weight)


def test_decode_step_repeats_the_same_context_and_its_cost_counts_weights_and_kv():
    model = scale.random_llama("cpu-small", dtype=torch.float32)
    cfg = model.config
    step = scale.decode_step(model, batch=3, context=8)
    first, second = step(), step()
    assert first.shape == (3, 1, cfg.vocab_size)
    assert torch.equal(first, second)  # the cache was cropped back: the same token over the same context
    cost = scale.decode_step_cost(model, batch=3, context=8)
    per_token = scale.kv_bytes_per_token(cfg, 4)
    assert cost["bytes"] == scale.weight_bytes(model) + 3 * 8 * per_token
    assert cost["bytes"] == scale.decode_step_bytes(scale.weight_bytes(model), per_token, 3, 8)
    params = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    products = params if cfg.tie_word_embeddings else params - embed
    attention = 4 * 3 * 8 * cfg.num_hidden_layers * cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)
    assert cost["flops"] == 2 * products * 3 + attention
    # the step's intensity is about the batch over the bytes per weight (FP32: B / 2): the decode roofline's x axis
    assert cost["intensity"] == pytest.approx(cost["flops"] / cost["bytes"])
    assert 3 / 2 * 0.5 < cost["intensity"] < 3 / 2 * 1.5
    assert scale.decode_step_cost(model, 6, 8)["intensity"] > cost["intensity"]


def test_speculative_costs_time_the_target_its_verification_and_the_draft():
    target = scale.random_llama("cpu-small", dtype=torch.float32)
    draft = scale.random_llama("cpu-tiny", dtype=torch.float32)
    assert draft.config.vocab_size == target.config.vocab_size  # a draft must share the target's vocabulary
    verify = scale.decode_step(target, batch=1, context=8, new_tokens=5)
    assert verify().shape == (1, 5, target.config.vocab_size) and torch.equal(verify(), verify())
    costs = scale.speculative_costs(target, draft, k=4, context=16, steps=2, rounds=2, repeat=2)
    assert costs["c"] == pytest.approx(costs["draft_ms"] / costs["target_ms"])
    assert costs["verify"] == pytest.approx(costs["verify_ms"] / costs["target_ms"])
    assert all(costs[key] > 0 for key in ("target_ms", "verify_ms", "draft_ms"))
    element = 4
    fewest = [scale.decode_step_bytes(scale.weight_bytes(m), scale.kv_bytes_per_token(m.config, element), 1, 16)
              for m in (draft, target)]
    assert costs["bytes_ratio"] == pytest.approx(fewest[0] / fewest[1]) and 0 < costs["bytes_ratio"] < 0.5
