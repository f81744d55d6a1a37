"""The claim map (issue #24): every sentence of a lecture that states a measured effect, and the metric that backs it.

Each entry maps a fragment of a lecture's markdown to the metric the notebook records for it
(``metrics.record("<name>", ...)``). The test checks that the fragment is still in the lecture, that the
notebook records the metric, and that both hardware profiles' threshold files bound it, so that a claim whose
effect vanished fails a threshold. A profile may be waived only with a written reason (``Waived``), and only
while that profile's threshold file does not bound the metric (a waiver outlives its reason once a bound
lands). A new claim without a metric shows up in review as a new sentence with no entry here.

All seven lectures are mapped.
"""
import json
import re
from typing import NamedTuple

import pytest
import yaml

from optcourse.core.paths import REPO_ROOT

LECTURES = REPO_ROOT / "lectures"
THRESHOLDS = REPO_ROOT / "autograder" / "thresholds"
PROFILES = ("cpu", "cuda")


L05_GPU_ONLY = ("the 2:4 kernels need an NVIDIA GPU of compute capability 8.0+: on cpu the cell says so and records "
                "nothing (the mask's accuracy cost only)")
L06_VLLM_CUDA_ONLY = "Section 2a runs only with vLLM on the cuda profile: skipped on cpu, where it records nothing"


class Waived(NamedTuple):
    """A metric that one profile does not bound, and why."""
    metric: str
    reasons: dict  # profile -> reason


CLAIMS = {
    "01_optimization_overview": {
        "The tail comes from the machine": "p99_over_p50_batch1",
        # one claim per profile: cpu.yaml bounds the CPU's gain from above, cuda.yaml the GPU's from below
        "batching buys little": "batching_gain_cnn",
        "on the GPU, where its batch-1 call is launch-bound, batching buys many-fold": "batching_gain_cnn",
        "throughput grows many-fold with B": "batching_gain_llm_decode",
        "ridge point": "ridge_point_flop_per_byte",
        "has an intensity below 1 FLOP/byte": "linear_1token_intensity",
        "sits near the memory roof, never far above it": "linear_1token_fraction_of_memory_roof",
        "and far below the peak": "linear_1token_fraction_of_peak",
        "the layer moves toward the compute roof": "linear_256tokens_fraction_of_peak",
        "transformers' eager decode reaches only a small fraction of the bandwidth bound at batch 1": Waived(
            "llm_decode_b1_fraction_of_bandwidth_bound", {"cpu": "the course Llama's 34 MB of FP32 weights nearly fit "
                                                                 "the CPU's last-level cache: no bound to check there"}),
        # one claim per profile: cpu.yaml bounds the CPU's ratio from below (right of its ridge), cuda.yaml the GPU's
        # from above (left of its ridge)
        "The 3×3 convolutions have a high intensity even at batch 1": "conv3x3_batch1_min_intensity_over_ridge",
        "the same convolutions sit left of it even in BF16": "conv3x3_batch1_min_intensity_over_ridge",
        "quality checked by the agreement of predictions": "optimized_prediction_agreement",
    },
    "02_tensorrt_deep_dive": {
        "the folded convolution gives the unfolded pair's output to float32 rounding": "bn_fold_max_abs_error",
        "Fusion removes most of the exported graph's nodes": "fusion_node_reduction",
        "the fused graph runs faster than the unfused one on the same thread": "fusion_speedup",
        "measured above as fewer nodes and less time": "fusion_speedup",
        "with the same logits up to float rounding": "fusion_max_logit_diff",
        "the largest value of each tensor lies above its 99.99th percentile": "calib_max_over_p9999",
        "a mild clip (99.99th percentile) matches or beats MinMax on held-out data here": "calib_p9999_minus_minmax_db",
        "loses several dB on both tensors": "calib_p999_loss_db",
        "Every calibration method keeps the test accuracy close to FP32's": "int8_accuracy_drop",
        "the U8S8 Q/DQ model runs faster than FP32 on this CPU's integer kernels": "int8_qdq_speedup",
        "every UINT8 tensor of the CPU's model": "u8s8_tensorrt_rejects",
        "The symmetric model has nothing TensorRT's parser rejects": "s8s8_tensorrt_rejects",
        "keeps the test accuracy close to FP32's (`s8s8_accuracy_drop`)": "s8s8_accuracy_drop",
        "predicts the same class as the FP32 model on the test images": "fp16_model_top1_agreement",
    },
    "03_onnx_runtime": {
        "The node count falls at `basic`": "minilm_node_reduction",
        # one claim per onnxruntime version: cpu.yaml bounds the lock's 1.31 (6), cuda.yaml the H200 image's 1.30 (0)
        "with onnxruntime 1.31 (the course's CPU lock) it makes one `Attention` node per layer (6 of 6)":
            "transformer_optimizer_attention_fused",
        "with onnxruntime 1.30 (the image of the H200 machine that recorded the cuda profile) it fuses no attention "
        "block (0 of 6)": "transformer_optimizer_attention_fused",
        "the built-in levels never made the model much slower": "minilm_opt_speedup",
        "the fused attention\nadds no speedup beyond the spread on top of `all`": "transformer_optimizer_speedup_vs_all",
        "the fused graph can even come out a\nlittle slower": "transformer_optimizer_speedup_vs_all",
        "take most of the kernel time": "profile_gemm_share",
        "folds those attention pieces and their GEMMs into `Attention`": "profile_fused_attention_share",
        "with onnxruntime 1.30 the fused graph's profile has no `Attention` row at all": "profile_fused_attention_share",
        "the optimizer's cost is small next to loading": "optimizer_load_cost_fraction",
        "it took several times a session load": "transformer_optimizer_over_session_load",
        "the optimized ORT model against PyTorch": "ort_vs_pytorch_min_cosine",
    },
    "04_quantization_techniques": {
        "about 6 dB of\nSQNR per bit": "sqnr_db_per_bit",
        "Per-channel scales matter most": "per_channel_gain_db",
        "which the affine scheme recovers (about 6 dB at 8 bits": "affine_gain_db_8bit",
        "One large value stretches a per-tensor range": "outlier_50x_per_tensor_loss_db",
        "both fit W8A8": "smoothquant_error_reduction",
        "makes it worse than no smoothing": "smoothquant_alpha025_down_proj_error_ratio",
        "Measured on real weights and activations": "fp8_e4m3_weight_sqnr_db",
        "BF16 against FP8, timed side by side": Waived("fp8_gemm_speedup", {"cpu": "torch._scaled_mm is a reference kernel on "
                                                                       "CPUs: no FP8 speed to claim there"}),
        "each product's error against FP32": "fp8_gemm_rel_error",
        "keeps sentence embeddings at cosine ≈ 0.99": "minilm_int8_min_cosine",
        "with a 4× smaller file": "minilm_int8_size_ratio",
        "the speed gain depends on INT8 kernels": "minilm_int8_speedup",
        "the search can only improve the\nlayer's output error": "awq_error_reduction_int3",
        "the README's 10.4 is the training report's figure": Waived("fp32_heldout_ppl_whole_file", {
            "cpu": "full mode only: smoke skips the whole-model perplexity runs"}),
        "the opening stretch of the\nheld-out file is harder than the file's average": Waived(
            "heldout_ppl_opening_over_whole_file", {"cpu": "full mode only: smoke skips the whole-model perplexity runs"}),
        "With 8 192 calibration tokens GPTQ lowers the layers' output error on held-out text below round-to-nearest":
            "gptq_int4_heldout_error_ratio",
        "With only 256 calibration tokens it does worse than round-to-nearest on held-out text":
            "gptq_int4_small_calib_heldout_error_ratio",
    },
    "05_pruning_distillation_lora": {
        "with global magnitude, half of the weights go for free": "unstructured_50pct_accuracy_drop",
        "has already collapsed at 50 %": "global_vs_layerwise_gap_50pct",
        "The global\nTaylor score is far worse than magnitude here, even at 50 %": "taylor_vs_magnitude_gap_50pct",
        "By 85 % one-shot pruning has\ncollapsed whatever the criterion": "unstructured_85pct_accuracy",
        "A dense convolution multiplies zeros as fast as any other number": "sparse90_speedup",
        "so ordinary dense kernels run less work": "structured_speedup",
        "removes about half of both the parameters and the FLOPs": "structured_flop_ratio_over_param_ratio",
        "without this step accuracy collapses": "structured_accuracy_without_bn_reestimate",
        "re-estimating BatchNorm statistics after the surgery is essential": "structured_accuracy",
        "distillation raised the student's accuracy in every seed": "kd_gain_min_over_seeds",
        "the mean gain is of the order of the spread": "kd_gain_over_seed_spread",
        "LoRA** trains a few percent of the parameters": "lora_trainable_fraction",
        "Perplexity on unseen code falls": "lora_code_ppl_ratio",
        "it rises in every run and by at most about half": "lora_docstring_ppl_ratio",
        "merges back exactly": "lora_merge_max_abs_error",
        "error on normally distributed weights is lower than uniform INT4's": "nf4_vs_int4_mse_ratio",
        # the 2:4 section's GPU measurements (cuda only)
        "the 2:4 pair is many times slower\n  than dense": Waived("two_four_eager_speedup_decode", {"cpu": L05_GPU_ONLY}),
        "nearly all of its time is the host's": Waived("two_four_eager_host_share_decode", {"cpu": L05_GPU_ONLY}),
        "the 2:4 kernels are faster than dense at prefill sizes (2048-8192 tokens), but well below\n  the 2x":
            Waived("two_four_graph_speedup_prefill", {"cpu": L05_GPU_ONLY}),
        "at decode sizes they are still slower than dense": Waived("two_four_graph_speedup_decode", {"cpu": L05_GPU_ONLY}),
        "the 2:4 kernels compute the dense product of the masked weights\n  up to FP16 rounding":
            Waived("two_four_rel_error", {"cpu": L05_GPU_ONLY}),
        "close to 2x faster at\n  prefill sizes": Waived("channel_pruned_mlp_speedup_prefill", {"cpu": L05_GPU_ONLY}),
        "clearly faster at decode sizes too": Waived("channel_pruned_mlp_speedup_decode", {"cpu": L05_GPU_ONLY}),
    },
    "06_llm_inference_optimization": {
        "the step time above **grows** with the batch": "decode_step_time_growth",
        "by far less than the batch, so the tokens/s still grow many-fold": "decode_batching_gain",
        "transformers' eager decode reaches only a small fraction of the bound at batch 1":
            "scale_decode_b1_fraction_of_bound",
        "so tokens/s grow almost with the batch": "scale_decode_batch_gain",
        "it grows far less than the batch until the math catches up with the weight reads": "scale_decode_batch_gain",
        "a longer context makes each step slower at the largest batch": "scale_decode_context_cost",
        "At batch 1 the matrix products take only part of the step": "profile_decode_b1_gemm_share",
        "At batch 1 `aten::cat` takes a small share of the step": "profile_decode_b1_cat_share",
        # one claim per profile: cpu.yaml bounds the CPU's share from below, cuda.yaml the GPU's from above
        "On a CPU, where an operator's CPU time is its work, it takes a large share, among the costliest operators":
            "profile_decode_cat_share_large_batch",
        "so at the largest batch cat's share of the step's CPU time stays as small as at batch 1":
            "profile_decode_cat_share_large_batch",
        "vLLM serves the same useful tokens many times faster than transformers' padded static batches": Waived(
            "vllm_over_hf_static_varied", {"cpu": L06_VLLM_CUDA_ONLY}),
        "CUDA graphs make vLLM's decode faster at batch 1": Waived(
            "cuda_graphs_decode_speedup_b1", {"cpu": L06_VLLM_CUDA_ONLY}),
        "and still at batch 256": Waived("cuda_graphs_decode_speedup_b256", {"cpu": L06_VLLM_CUDA_ONLY}),
        "at batch 1 vLLM reaches a large part of the bandwidth bound": Waived(
            "vllm_decode_b1_fraction_of_bound", {"cpu": L06_VLLM_CUDA_ONLY}),
        "so the ratio sits a little under 1": Waived("vllm_kv_tokens_over_arithmetic", {"cpu": L06_VLLM_CUDA_ONLY}),
        "so even the best of them has a large share of its drafted tokens rejected": "early_exit_max_acceptance_rate",
        "speculation with any of them is slower than plain decoding": "early_exit_max_speedup",
        "so it is accepted often": "speculative_acceptance_rate",
        "the fastest draft makes greedy decoding faster": "speculative_speedup",
        "with the output unchanged token for token": "greedy_outputs_identical",
        "with greedy acceptance it returns exactly the target's output (verified above)": "greedy_outputs_identical",
        "its samples are as close to the target's distribution as the target's own samples are": "speculative_sampling_tv_over_noise",
        "Verifying $k+1$ tokens costs more than one decode step here on a CPU": "speculative_scale_verify_cost",
        "on a GPU at real sizes the pass is one more read of the same weights": "speculative_scale_verify_cost",
        "The draft's step costs about its share of the bytes a step reads or more": "speculative_scale_draft_cost_over_bytes",
        "the formula predicts the real loop's speed within a fraction": "speculative_scale_model_ratio",
        "below the break-even acceptance printed above": "speculative_scale_break_even_acceptance",
        "the tiled online-softmax attention matches the naive one to float rounding": "tiled_attention_max_abs_error",
        "PyTorch's flash backend is faster than `MATH` at the longest length timed": "sdpa_flash_speedup",
        "`MATH`'s peak holds at least one whole": "sdpa_math_peak_over_scores",
        "while flash needs a small fraction of one": "sdpa_flash_peak_over_scores",
        "the formula matches real caches byte for byte": "kv_cache_formula_matches",
        "The split MLP gives the full MLP's output to float rounding": "tensor_parallel_max_abs_error",
    },
    "07_continuous_batching_kv_cache": {
        "most of its slots hold finished sequences": "static_slots_idle_fraction",
        "below what continuous batching of 8\nsequences can serve": "continuous_mean_ttft_steps",
        "it has lower latency than\n  request-level batching at every load": "low_load_latency_gain",
        "higher throughput as soon as requests queue": "continuous_vs_static_throughput",
        "at a load static\n  batching cannot sustain, and far beyond": "overload_throughput_gain",
        "At the lowest demand both policies serve every token that arrives (same throughput)": "low_load_throughput_ratio",
        "static\nbatching's latency is already higher": "continuous_vs_static_latency",
        "the long prompts' TTFT grows — by more than\n2x": "chunked_prefill_long_ttft_ratio",
        "e4m3 (3 mantissa bits) is about twice as precise as e5m2": "kv_e5m2_over_e4m3_error_k",
        "At the same granularity INT8 is *more* precise than e4m3": "kv_int8_over_e4m3_error_k_per_tensor",
        "A per-token scale helps INT8": "kv_int8_per_token_over_per_tensor_error_k",
        "so scale 1.0 costs nothing here": "kv_e4m3_unscaled_over_scaled_error_k",
        "the\nlargest |K| or |V| is far below 448": "kv_absmax_over_e4m3_max",
        "a harmless\noptimization": "canary_good_release_promoted",
        "about +10 % perplexity": "canary_int4_ppl_ratio",
        "chunks bound the decoders' worst gap": "chunked_prefill_stall_reduction",
        "wastes < 1 block per sequence": "paged_kv_utilisation",
        "reuses identical\n  prefix blocks exactly (same logits)": "prefix_cache_logit_max_abs_error",
        "cuts TTFT roughly in proportion to the cached share": "prefix_cache_prefill_speedup",
        "e4m3 and INT8 keep the next-token\npredictions here": "kv_fp8_e4m3_top1_agreement",
        "priorities protect interactive traffic from bursts": "priority_interactive_ttft_gain",
        "escalates\nwhen it is unsure": "cascade_escalated_fraction",
        "a plausible bad one": "canary_rollback_decision",
        "Far more requests meet the SLO at the low rate than at the high one": "loadtest_slo_fraction_drop",
        "the server still answers every request": "loadtest_high_rate_answered_fraction",
        "most miss the SLO": "loadtest_high_rate_slo_fraction",
        "every request\nleft within a fraction of a second of its Poisson arrival time": "loadtest_max_send_lag_ms",
        "with no request dropped": "bluegreen_failed_requests",
        "each by the one version that was live when the router read the switch": "bluegreen_misrouted_requests",
        "The flip and the rollback are each a reference assignment, far below a\nmillisecond": "bluegreen_rollback_ms",
        "the\ndeployment holds about twice the weights": "bluegreen_memory_ratio",
    },
}


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _notebook(name: str) -> tuple[str, str]:
    nb = json.loads((LECTURES / f"{name}.ipynb").read_text())
    markdown = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    return _words(markdown), code


def _thresholds(profile: str) -> dict:
    return yaml.safe_load((THRESHOLDS / f"{profile}.yaml").read_text()) or {}


@pytest.mark.parametrize("name", list(CLAIMS))
def test_every_claim_is_in_the_lecture_and_backed_by_a_bounded_metric(name):
    markdown, code = _notebook(name)
    bounds = {p: _thresholds(p).get(name) or {} for p in PROFILES}
    problems = []
    for fragment, entry in CLAIMS[name].items():
        metric, reasons = (entry.metric, entry.reasons) if isinstance(entry, Waived) else (entry, {})
        if _words(fragment) not in markdown:
            problems.append(f"claim not found in the lecture's markdown: {fragment!r}")
        if not re.search(rf"""record\(\s*["']{re.escape(metric)}["']""", code):
            problems.append(f"{metric} (for {fragment!r}) is not recorded by the notebook")
        for profile in PROFILES:
            if metric not in bounds[profile] and not reasons.get(profile):
                problems.append(f"{metric} (for {fragment!r}) has no threshold in {profile}.yaml and no reason")
            if metric in bounds[profile] and reasons.get(profile):
                problems.append(f"{metric} (for {fragment!r}) is waived on {profile} but {profile}.yaml bounds it: "
                                f"drop the waiver")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", list(CLAIMS))
def test_every_lecture_threshold_belongs_to_a_claim(name):
    """The other way round: a bound with no sentence behind it is a number nobody reads."""
    claimed = {e.metric if isinstance(e, Waived) else e for e in CLAIMS[name].values()}
    for profile in PROFILES:
        unclaimed = sorted(set(_thresholds(profile).get(name) or {}) - claimed - UNCLAIMED_BOUNDS.get(name, set()))
        assert not unclaimed, f"{profile}.yaml bounds {unclaimed} of {name}, which no claim of the map names"


# bounds kept although no sentence states them as an effect (each with its reason)
UNCLAIMED_BOUNDS = {
    # a guard against a vLLM upgrade renaming the metrics the lecture's PromQL uses
    "07_continuous_batching_kv_cache": {"vllm_metric_names_found", "kv_fp8_e4m3_rel_error_k"},
    # the workflow miniature's speed-up (cuda: FP16 in a CUDA graph over FP32 eager, both on the GPU)
    "01_optimization_overview": {"optimized_speedup_vs_eager"},
    "05_pruning_distillation_lora": {"kd_student_accuracy"},  # the student trains at all
    # the absolute batch-1 speed the fraction of the bound is computed from (a guard against a broken engine start)
    "06_llm_inference_optimization": {"vllm_decode_b1_tok_s"},
}
