"""Named formulas behind every numeric quiz question.

Numeric questions in the bank never carry a typed-in answer: they name one of
these functions and give its parameters (fixed or drawn per student). Keeping
the arithmetic here means a wrong number can be fixed once, and the tests can
check each formula against hand-computed reference values.

Conventions: GiB/MiB/KiB are binary (2**30, 2**20, 2**10 bytes); "billion
parameters" is decimal (1e9); TB/s of memory bandwidth is decimal (1e12 B/s),
as GPU datasheets quote it.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable

GIB = 2**30
MIB = 2**20
KIB = 2**10

# Bytes per element for the storage formats used in the course.
BYTES_PER_ELEMENT = {
    "fp32": 4.0,
    "tf32": 4.0,  # TF32 is a compute mode; tensors are still stored in 32 bits
    "fp16": 2.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}


def bytes_per_element(precision: str) -> float:
    try:
        return BYTES_PER_ELEMENT[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; known: {sorted(BYTES_PER_ELEMENT)}") from None


FORMULAS: dict[str, Callable[..., float]] = {}


def formula(func: Callable[..., float]) -> Callable[..., float]:
    """Register a function so the bank can refer to it by name."""
    FORMULAS[func.__name__] = func
    return func


def evaluate(name: str, params: dict) -> float:
    if name not in FORMULAS:
        raise KeyError(f"unknown formula {name!r}")
    return float(FORMULAS[name](**params))


# --- Lecture 1: metrics and the optimization workflow -------------------------

@formula
def speedup(baseline_ms: float, optimized_ms: float) -> float:
    """How many times faster the optimized version is."""
    return baseline_ms / optimized_ms


@formula
def amdahl_speedup(accelerated_fraction: float, component_speedup: float) -> float:
    """End-to-end speedup when only a fraction of the runtime gets faster."""
    return 1.0 / ((1.0 - accelerated_fraction) + accelerated_fraction / component_speedup)


@formula
def batch_throughput_per_s(batch_size: int, batch_latency_ms: float) -> float:
    """Requests per second when batches of `batch_size` complete back to back."""
    return batch_size / (batch_latency_ms / 1000.0)


@formula
def cost_per_million_tokens_usd(gpu_hour_usd: float, tokens_per_second: float) -> float:
    """Serving cost of one million generated tokens on one fully used GPU."""
    return gpu_hour_usd / (tokens_per_second * 3600.0) * 1e6


@formula
def littles_law_concurrency(arrival_rate_per_s: float, latency_s: float) -> float:
    """Little's law: mean number of requests in flight L = lambda * W."""
    return arrival_rate_per_s * latency_s


@formula
def nearest_rank_percentile_index(num_samples: int, percentile: float) -> float:
    """1-based rank of the p-th percentile sample (nearest-rank method).

    Exact arithmetic: in floats 99.9 / 100 * 1000 is 999.0000000000001, whose ceiling is 1000.
    """
    return float(math.ceil(Fraction(str(percentile)) / 100 * num_samples))


@formula
def linear_layer_arithmetic_intensity(tokens: int, d_in: int, d_out: int, precision: str) -> float:
    """FLOP per byte of a [tokens x d_in] @ [d_in x d_out] layer, each tensor's bytes counted once."""
    flops = 2 * tokens * d_in * d_out
    tensor_bytes = (d_in * d_out + tokens * (d_in + d_out)) * bytes_per_element(precision)
    return flops / tensor_bytes


@formula
def roofline_attainable_tflops(intensity_flop_per_byte: float, peak_tflops: float, bandwidth_tb_s: float) -> float:
    """Roofline: min(peak compute, intensity x memory bandwidth)."""
    return min(peak_tflops, intensity_flop_per_byte * bandwidth_tb_s)


# --- Lectures 2 and 3: engines, memory traffic, model size ------------------

@formula
def model_weights_gib(params_billion: float, precision: str) -> float:
    """Memory for the weights alone (no activations, KV cache or workspace)."""
    return params_billion * 1e9 * bytes_per_element(precision) / GIB


@formula
def activation_tensor_mib(batch: int, seq_len: int, hidden: int, precision: str) -> float:
    """Size of one [batch, seq_len, hidden] activation tensor."""
    return batch * seq_len * hidden * bytes_per_element(precision) / MIB


@formula
def fusion_traffic_saved_mib(elements_million: float, num_elementwise_ops: int, precision: str) -> float:
    """DRAM traffic avoided by fusing a chain of element-wise ops into one kernel.

    Unfused, each op reads and writes the whole tensor (2 * ops passes); fused,
    the chain reads it once and writes it once (2 passes).
    """
    tensor_bytes = elements_million * 1e6 * bytes_per_element(precision)
    return 2 * (num_elementwise_ops - 1) * tensor_bytes / MIB


@formula
def partially_quantized_size_mb(fp32_size_mb: float, int8_fraction: float) -> float:
    """Model file size after quantizing a fraction of the FP32 weights to INT8.

    Scales and zero points are ignored (a few bytes per tensor or channel).
    """
    return fp32_size_mb * (1.0 - int8_fraction) + fp32_size_mb * int8_fraction / 4.0


# --- Lecture 4: quantization arithmetic ---------------------------------------

@formula
def affine_scale(range_min: float, range_max: float, num_bits: int) -> float:
    """Scale of unsigned affine (asymmetric) quantization: (max - min) / (2^b - 1).

    The range is first widened to include 0 so that 0.0 is exactly representable.
    """
    low, high = min(range_min, 0.0), max(range_max, 0.0)
    return (high - low) / (2**num_bits - 1)


@formula
def affine_zero_point(range_min: float, range_max: float, num_bits: int) -> float:
    """Zero point of unsigned affine quantization: round(-min / scale), clamped."""
    scale = affine_scale(range_min, range_max, num_bits)
    zero_point = round(-min(range_min, 0.0) / scale)
    return float(min(max(zero_point, 0), 2**num_bits - 1))


@formula
def symmetric_quantize(value: float, abs_max: float, num_bits: int) -> float:
    """Signed symmetric quantization with a restricted range [-(2^(b-1)-1), 2^(b-1)-1]."""
    qmax = 2 ** (num_bits - 1) - 1
    scale = abs_max / qmax
    return float(min(max(round(value / scale), -qmax), qmax))


@formula
def symmetric_max_rounding_error(abs_max: float, num_bits: int) -> float:
    """Worst-case rounding error inside the clipping range: half a quantization step."""
    return abs_max / (2 ** (num_bits - 1) - 1) / 2.0


@formula
def group_quant_bits_per_weight(weight_bits: int, group_size: int, scale_bits: int, zero_point_bits: int) -> float:
    """Effective storage cost of group-wise weight quantization (GPTQ/AWQ style)."""
    return weight_bits + (scale_bits + zero_point_bits) / group_size


# --- Lecture 5: pruning, distillation, LoRA/QLoRA -----------------------------

@formula
def lora_trainable_params(d_in: int, d_out: int, rank: int, num_adapted_matrices: int) -> float:
    """LoRA adds A (rank x d_in) and B (d_out x rank) to each adapted matrix."""
    return float(rank * (d_in + d_out) * num_adapted_matrices)


@formula
def lora_scaling(lora_alpha: float, rank: int) -> float:
    """The update B @ A is multiplied by alpha / r."""
    return lora_alpha / rank


@formula
def sparse_24_storage_ratio(value_bits: int) -> float:
    """Compressed size / dense size for a 2:4 sparse matrix.

    Half the values are kept, plus 2 bits of position metadata per kept value.
    """
    return (0.5 * value_bits + 0.5 * 2) / value_bits


@formula
def distillation_soft_prob(logit_gap: float, temperature: float) -> float:
    """Softmax probability of the larger of two logits at a given temperature."""
    return 1.0 / (1.0 + math.exp(-logit_gap / temperature))


@formula
def nf4_double_quant_bits_per_param(block_size: int, second_block_size: int) -> float:
    """QLoRA storage: 4-bit NF4 + FP8 block scales + FP32 scales of the scales."""
    return 4.0 + 8.0 / block_size + 32.0 / (block_size * second_block_size)


@formula
def qlora_base_weights_gib(params_billion: float, block_size: int, second_block_size: int) -> float:
    bits = nf4_double_quant_bits_per_param(block_size, second_block_size)
    return params_billion * 1e9 * bits / 8.0 / GIB


# --- Lecture 6: LLM inference -------------------------------------------------

@formula
def decode_step_lower_bound_ms(params_billion: float, precision: str, bandwidth_tb_s: float) -> float:
    """Memory-bound decode: every step streams all weights from HBM at least once."""
    weight_bytes = params_billion * 1e9 * bytes_per_element(precision)
    return weight_bytes / (bandwidth_tb_s * 1e12) * 1000.0


@formula
def ridge_batch_size(peak_tflops: float, bandwidth_tb_s: float, precision: str) -> float:
    """Batch at which a weight GEMM turns compute-bound (roofline ridge point).

    A [batch x k] @ [k x n] GEMM does 2*batch*k*n FLOPs on k*n weights, so its
    intensity is 2*batch/bytes_per_weight FLOP/B (activations ignored).
    """
    ridge_flop_per_byte = peak_tflops / bandwidth_tb_s
    return ridge_flop_per_byte * bytes_per_element(precision) / 2.0


@formula
def speculative_expected_tokens(acceptance_rate: float, num_draft_tokens: int) -> float:
    """Expected tokens per target forward pass (Leviathan et al. 2023).

    (1 - a^(g+1)) / (1 - a), with i.i.d. per-token acceptance rate a and g drafts.
    """
    if acceptance_rate >= 1.0:
        return float(num_draft_tokens + 1)
    return (1.0 - acceptance_rate ** (num_draft_tokens + 1)) / (1.0 - acceptance_rate)


@formula
def speculative_speedup(acceptance_rate: float, num_draft_tokens: int, draft_cost_ratio: float) -> float:
    """Wall-clock speedup of speculative decoding over plain decoding (Leviathan et al. 2023).

    Tokens per target pass divided by the cost of one round: k draft steps of relative cost c
    plus one target pass, i.e. E / (k * c + 1).
    """
    return speculative_expected_tokens(acceptance_rate, num_draft_tokens) / (num_draft_tokens * draft_cost_ratio + 1.0)


@formula
def pipeline_bubble_fraction(num_stages: int, num_microbatches: int) -> float:
    """Idle fraction of a GPipe schedule: (p - 1) / (m + p - 1)."""
    return (num_stages - 1) / (num_microbatches + num_stages - 1)


@formula
def prefill_time_ms(params_billion: float, prompt_tokens: int, peak_tflops: float, mfu: float) -> float:
    """Compute-bound prefill: about 2 FLOPs per parameter per token (attention ignored)."""
    flops = 2.0 * params_billion * 1e9 * prompt_tokens
    return flops / (peak_tflops * 1e12 * mfu) * 1000.0


@formula
def tensor_parallel_weights_gib(params_billion: float, precision: str, tp_size: int) -> float:
    """Per-GPU weight memory when weights are sharded evenly over tp_size GPUs."""
    return model_weights_gib(params_billion, precision) / tp_size


# --- Lecture 7: KV cache and batching -----------------------------------------

@formula
def kv_cache_kib_per_token(num_layers: int, num_kv_heads: int, head_dim: int, precision: str) -> float:
    """2 (K and V) * layers * kv_heads * head_dim * bytes, per token."""
    return 2 * num_layers * num_kv_heads * head_dim * bytes_per_element(precision) / KIB


@formula
def kv_cache_gib(num_layers: int, num_kv_heads: int, head_dim: int, precision: str, seq_len: int, batch: int) -> float:
    per_token_bytes = kv_cache_kib_per_token(num_layers, num_kv_heads, head_dim, precision) * KIB
    return per_token_bytes * seq_len * batch / GIB


@formula
def tokens_in_kv_budget(budget_gib: float, num_layers: int, num_kv_heads: int, head_dim: int, precision: str) -> float:
    """Whole tokens of KV cache that fit in a memory budget."""
    per_token_bytes = kv_cache_kib_per_token(num_layers, num_kv_heads, head_dim, precision) * KIB
    return float(math.floor(budget_gib * GIB / per_token_bytes))


@formula
def kv_blocks_needed(prompt_tokens: int, output_tokens: int, block_size: int) -> float:
    """Paged KV cache blocks a request holds once it has generated all its tokens."""
    return float(math.ceil((prompt_tokens + output_tokens) / block_size))


@formula
def prefix_cache_blocks_saved(num_requests: int, shared_prefix_tokens: int, block_size: int) -> float:
    """Blocks saved by automatic prefix caching: only FULL blocks are shared."""
    return float((num_requests - 1) * (shared_prefix_tokens // block_size))


@formula
def tpot_ms(e2e_latency_ms: float, ttft_ms: float, output_tokens: int) -> float:
    """Time per output token after the first: (E2E - TTFT) / (tokens - 1)."""
    return (e2e_latency_ms - ttft_ms) / (output_tokens - 1)


@formula
def static_batch_kv_waste_fraction(max_seq_len: int, mean_seq_len: int) -> float:
    """Fraction of a max-length KV reservation left unused on average."""
    return 1.0 - mean_seq_len / max_seq_len


@formula
def cascade_cost_per_request_ms(cheap_ms: float, large_ms: float, escalated_fraction: float) -> float:
    """A cascade always runs the cheap model and adds the large one for escalated requests."""
    return cheap_ms + escalated_fraction * large_ms
