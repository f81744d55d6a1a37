"""Execute lectures 5-7 with papermill (smoke parameters) and check what their demos measured.

Each check would fail if the demo it belongs to broke (e.g. speculative decoding no longer returning
the target's greedy output, LoRA merge no longer exact, the batching simulator no longer beating static
batching). Timing ratios are left to the thresholds files; only effects that do not depend on machine
load are asserted here.
"""
import json
import pathlib
import sys

import pytest

from optcourse.core.paths import REPO_ROOT

LECTURES = REPO_ROOT / "lectures"

CHECKS = {
    "05_pruning_distillation_lora": {
        "unstructured_50pct_accuracy_drop": ("max", 0.05),
        "structured_accuracy": ("min", 0.85),
        "kd_student_accuracy": ("min", 0.5),
        "lora_trainable_fraction": ("max", 0.05),
        "lora_code_ppl_ratio": ("max", 0.95),
        "lora_merge_max_abs_error": ("max", 1e-3),
        "nf4_vs_int4_mse_ratio": ("max", 0.95),
    },
    "06_llm_inference_optimization": {
        "greedy_outputs_identical": ("min", 1.0),
        "speculative_acceptance_rate": ("min", 0.2),
        "tiled_attention_max_abs_error": ("max", 1e-4),
        "kv_cache_formula_matches": ("min", 1.0),
        "tensor_parallel_max_abs_error": ("max", 1e-4),
    },
    "07_continuous_batching_kv_cache": {
        "continuous_vs_static_throughput": ("min", 1.05),
        "continuous_vs_static_latency": ("min", 1.05),
        "chunked_prefill_stall_reduction": ("min", 1.5),
        "paged_kv_utilisation": ("min", 0.9),
        "prefix_cache_logit_max_abs_error": ("max", 1e-3),
        "kv_fp8_e4m3_top1_agreement": ("min", 0.8),
        "kv_fp8_e4m3_rel_error_k": ("max", 0.1),
        "priority_interactive_ttft_gain": ("min", 1.5),
        "cascade_escalated_fraction": ("max", 0.9),
        "canary_rollback_decision": ("min", 1.0),
    },
}
PLOTS = {
    "05_pruning_distillation_lora": ["05_pruning_curve.png", "05_nf4_levels.png"],
    "06_llm_inference_optimization": ["06_prefill_decode.png", "06_speculative.png", "06_attention.png"],
    "07_continuous_batching_kv_cache": ["07_batching_timelines.png", "07_cascade.png"],
}


def test_lecture_notebooks_have_parameters_and_no_outputs():
    import nbformat

    for name in CHECKS:
        nb = nbformat.read(LECTURES / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), name
        for key in ('device = "auto"', "smoke = True", "metrics_path = None", 'output_dir = "outputs"'):
            assert key in code[0].source, (name, key)
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
        assert "Key takeaways" in nb.cells[-1].source or any("Key takeaways" in c.source for c in nb.cells)


@pytest.mark.notebooks
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("name", list(CHECKS))
def test_lecture_executes_and_measures(name, executed_notebook):
    run = executed_notebook(LECTURES / f"{name}.ipynb")  # shared with tests/test_notebooks.py
    assert run.ok, run.error
    metrics_path, out_dir = run.metrics_path, run.artifacts
    recorded = json.loads(metrics_path.read_text())["metrics"]
    failures = []
    for metric, (kind, bound) in CHECKS[name].items():
        if metric not in recorded:
            failures.append(f"{metric}: not recorded")
            continue
        value = recorded[metric]["value"]
        if (kind == "min" and value < bound) or (kind == "max" and value > bound):
            failures.append(f"{metric} = {value:.4g}, expected {kind} {bound}")
    if "vllm_metric_names_found" in recorded:  # only when vLLM is installed
        if recorded["vllm_metric_names_found"]["value"] != 1.0:
            failures.append("a vLLM metric name shown in lecture 7 is missing from the installed vLLM")
    for plot in PLOTS[name]:
        if not (out_dir / plot).is_file():
            failures.append(f"plot {plot} not written")
    assert not failures, "\n".join(failures)
