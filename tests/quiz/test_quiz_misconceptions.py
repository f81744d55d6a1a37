"""Numeric tolerances reject the common wrong formulas, for every parameter draw a student can get."""

import math

import pytest

from optcourse.quiz import bank as bank_module
from optcourse.quiz.formulas import BYTES_PER_ELEMENT as B
from optcourse.quiz.grade import numeric_within_tolerance

GIB, MIB, KIB = 2**30, 2**20, 2**10

# Formula name -> {misconception: wrong formula}. Written from the mistakes students make,
# independently of formulas.py.
WRONG_FORMULAS = {
    "speedup": {"inverted ratio": lambda baseline_ms, optimized_ms: optimized_ms / baseline_ms,
                "latency reduction": lambda baseline_ms, optimized_ms: 1 - optimized_ms / baseline_ms},
    "amdahl_speedup": {"whole request gets the component speedup": lambda accelerated_fraction, component_speedup:
                       component_speedup,
                       "speedups averaged by time share": lambda accelerated_fraction, component_speedup:
                       accelerated_fraction * component_speedup + 1 - accelerated_fraction},
    "batch_throughput_per_s": {"batch ignored": lambda batch_size, batch_latency_ms: 1000 / batch_latency_ms,
                               "ms taken as s": lambda batch_size, batch_latency_ms: batch_size / batch_latency_ms},
    "cost_per_million_tokens_usd": {"seconds taken as hours": lambda gpu_hour_usd, tokens_per_second:
                                    gpu_hour_usd / tokens_per_second * 1e6},
    "littles_law_concurrency": {"rate divided by latency": lambda arrival_rate_per_s, latency_s:
                                arrival_rate_per_s / latency_s},
    "nearest_rank_percentile_index": {"0-based index": lambda num_samples, percentile:
                                      math.ceil(percentile * num_samples / 100) - 1},
    "linear_layer_arithmetic_intensity": {
        "weight bytes only": lambda tokens, d_in, d_out, precision: 2 * tokens / B[precision],
        "one FLOP per multiply-add": lambda tokens, d_in, d_out, precision:
        tokens * d_in * d_out / ((d_in * d_out + tokens * (d_in + d_out)) * B[precision])},
    "roofline_attainable_tflops": {"peak compute regardless of intensity": lambda intensity_flop_per_byte,
                                   peak_tflops, bandwidth_tb_s: peak_tflops},
    "activation_tensor_mib": {"decimal MB": lambda batch, seq_len, hidden, precision:
                              batch * seq_len * hidden * B[precision] / 1e6},
    "fusion_traffic_saved_mib": {"all unfused traffic": lambda elements_million, num_elementwise_ops, precision:
                                 2 * num_elementwise_ops * elements_million * 1e6 * B[precision] / MIB,
                                 "writes only": lambda elements_million, num_elementwise_ops, precision:
                                 (num_elementwise_ops - 1) * elements_million * 1e6 * B[precision] / MIB},
    "partially_quantized_size_mb": {"INT8 as half of FP32": lambda fp32_size_mb, int8_fraction:
                                    fp32_size_mb * (1 - int8_fraction / 2),
                                    "whole model 4x smaller": lambda fp32_size_mb, int8_fraction: fp32_size_mb / 4},
    "affine_scale": {"2^b levels instead of 2^b - 1 steps": lambda range_min, range_max, num_bits:
                     (max(range_max, 0) - min(range_min, 0)) / 2**num_bits,
                     "symmetric scale": lambda range_min, range_max, num_bits:
                     max(abs(range_min), abs(range_max)) / (2 ** (num_bits - 1) - 1)},
    "affine_zero_point": {"zero point from the top of the range": lambda range_min, range_max, num_bits:
                          round(range_max / ((range_max - range_min) / (2**num_bits - 1)))},
    "symmetric_quantize": {"unsigned scale": lambda value, abs_max, num_bits:
                           round(value / (abs_max / (2**num_bits - 1)))},
    "symmetric_max_rounding_error": {"a whole step": lambda abs_max, num_bits: abs_max / (2 ** (num_bits - 1) - 1),
                                     "step of 2^b levels": lambda abs_max, num_bits: abs_max / 2**num_bits / 2},
    "group_quant_bits_per_weight": {"metadata ignored": lambda weight_bits, group_size, scale_bits,
                                    zero_point_bits: weight_bits},
    "sparse_24_storage_ratio": {"metadata ignored": lambda value_bits: 0.5},
    "distillation_soft_prob": {"temperature ignored": lambda logit_gap, temperature: 1 / (1 + math.exp(-logit_gap)),
                               "temperature multiplies": lambda logit_gap, temperature:
                               1 / (1 + math.exp(-logit_gap * temperature))},
    "lora_trainable_params": {"A only": lambda d_in, d_out, rank, num_adapted_matrices: rank * d_in * num_adapted_matrices,
                              "full matrices": lambda d_in, d_out, rank, num_adapted_matrices:
                              d_in * d_out * num_adapted_matrices},
    "lora_scaling": {"rsLoRA alpha / sqrt(r)": lambda lora_alpha, rank: lora_alpha / math.sqrt(rank)},
    "qlora_base_weights_gib": {"4 bits flat": lambda params_billion, block_size, second_block_size:
                               params_billion * 1e9 * 4 / 8 / GIB,
                               "decimal GB": lambda params_billion, block_size, second_block_size:
                               params_billion * 1e9 * (4 + 8 / block_size + 32 / (block_size * second_block_size)) / 8 / 1e9},
    "decode_step_lower_bound_ms": {"TB read as 2^40 bytes": lambda params_billion, precision, bandwidth_tb_s:
                                   params_billion * 1e9 * B[precision] / (bandwidth_tb_s * 2**40) * 1000},
    "ridge_batch_size": {"bytes per weight ignored": lambda peak_tflops, bandwidth_tb_s, precision:
                         peak_tflops / bandwidth_tb_s / 2},
    "speculative_expected_tokens": {"no stop at the first rejection": lambda acceptance_rate, num_draft_tokens:
                                    1 + acceptance_rate * num_draft_tokens},
    "speculative_speedup": {
        "draft cost ignored": lambda acceptance_rate, num_draft_tokens, draft_cost_ratio:
        (1 - acceptance_rate ** (num_draft_tokens + 1)) / (1 - acceptance_rate),
        "one draft pass per round": lambda acceptance_rate, num_draft_tokens, draft_cost_ratio:
        (1 - acceptance_rate ** (num_draft_tokens + 1)) / (1 - acceptance_rate) / (1 + draft_cost_ratio)},
    "pipeline_bubble_fraction": {"(p - 1) / m": lambda num_stages, num_microbatches:
                                 (num_stages - 1) / num_microbatches},
    "prefill_time_ms": {"MFU ignored": lambda params_billion, prompt_tokens, peak_tflops, mfu:
                        2 * params_billion * 1e9 * prompt_tokens / (peak_tflops * 1e12) * 1000},
    "tensor_parallel_weights_gib": {"decimal GB": lambda params_billion, precision, tp_size:
                                    params_billion * B[precision] / tp_size,
                                    "not sharded": lambda params_billion, precision, tp_size:
                                    params_billion * 1e9 * B[precision] / GIB},
    "kv_cache_kib_per_token": {"K only": lambda num_layers, num_kv_heads, head_dim, precision:
                               num_layers * num_kv_heads * head_dim * B[precision] / KIB},
    "kv_cache_gib": {"K only": lambda num_layers, num_kv_heads, head_dim, precision, seq_len, batch:
                     num_layers * num_kv_heads * head_dim * B[precision] * seq_len * batch / GIB},
    "tokens_in_kv_budget": {"K only": lambda budget_gib, num_layers, num_kv_heads, head_dim, precision:
                            budget_gib * GIB // (num_layers * num_kv_heads * head_dim * B[precision])},
    "kv_blocks_needed": {"prompt only": lambda prompt_tokens, output_tokens, block_size:
                         math.ceil(prompt_tokens / block_size),
                         "rounded down": lambda prompt_tokens, output_tokens, block_size:
                         (prompt_tokens + output_tokens) // block_size},
    "prefix_cache_blocks_saved": {"partial block shared too": lambda num_requests, shared_prefix_tokens, block_size:
                                  (num_requests - 1) * math.ceil(shared_prefix_tokens / block_size),
                                  "first request saves too": lambda num_requests, shared_prefix_tokens, block_size:
                                  num_requests * (shared_prefix_tokens // block_size)},
    "tpot_ms": {"divided by all tokens": lambda e2e_latency_ms, ttft_ms, output_tokens:
                (e2e_latency_ms - ttft_ms) / output_tokens,
                "TTFT not subtracted": lambda e2e_latency_ms, ttft_ms, output_tokens: e2e_latency_ms / output_tokens},
    "static_batch_kv_waste_fraction": {"used fraction": lambda max_seq_len, mean_seq_len: mean_seq_len / max_seq_len},
    "cascade_cost_per_request_ms": {"cheap model skipped on escalation": lambda cheap_ms, large_ms, escalated_fraction:
                                    (1 - escalated_fraction) * cheap_ms + escalated_fraction * large_ms},
}


@pytest.fixture(scope="module")
def numeric_questions():
    return [q for q in bank_module.load_bank() if q["kind"] == "numeric"]


def test_every_formula_in_the_bank_has_known_wrong_formulas(numeric_questions):
    missing = {q["formula"] for q in numeric_questions} - {name for name, wrong in WRONG_FORMULAS.items() if wrong}
    assert not missing, f"add the common mistakes for {sorted(missing)}"


def test_tolerances_reject_every_wrong_formula_for_every_draw(numeric_questions):
    accepted = []
    for question in numeric_questions:
        for params in bank_module.all_param_combinations(question):
            answer = bank_module.numeric_answer(question, params)
            for misconception, wrong in WRONG_FORMULAS[question["formula"]].items():
                if numeric_within_tolerance(float(wrong(**params)), answer, question["tolerance"]):
                    accepted.append(f"{question['id']} {params}: '{misconception}' gives {wrong(**params):.6g}, "
                                    f"accepted for {answer:.6g}")
    assert not accepted, "\n".join(accepted[:20])


def test_a_loose_tolerance_would_be_caught(numeric_questions):
    """The check can fail: with the old 1% tolerance, TPOT over all n tokens was accepted."""
    tpot = next(q for q in numeric_questions if q["formula"] == "tpot_ms")
    params = {"e2e_latency_ms": 3500, "ttft_ms": 350, "output_tokens": 256}
    wrong = WRONG_FORMULAS["tpot_ms"]["divided by all tokens"](**params)
    answer = bank_module.numeric_answer(tpot, params)
    assert numeric_within_tolerance(wrong, answer, {"rel": 0.01})
    assert not numeric_within_tolerance(wrong, answer, tpot["tolerance"])
