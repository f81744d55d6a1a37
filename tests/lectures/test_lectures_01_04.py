"""Lectures 1-4: committed clean with the parameters convention, and executing headlessly (papermill,
smoke parameters) with demos whose outputs would be wrong if a demo broke."""

import json
import pathlib

import nbformat
import pytest

from optcourse.measure.metrics import read_metrics
from optcourse.core.paths import REPO_ROOT

LECTURES = REPO_ROOT / "lectures"
NOTEBOOKS = ["01_optimization_overview", "02_tensorrt_deep_dive", "03_onnx_runtime", "04_quantization_techniques"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_clean_with_parameters_takeaways_and_references(name):
    nb = nbformat.read(LECTURES / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "commit notebooks without outputs"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] is code[0], "the first code cell, and only it, is tagged `parameters`"
    for line in ('device = "auto"', "smoke = True", "metrics_path = None", 'output_dir = "outputs"'):
        assert line in params[0].source
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "## Key takeaways" in markdown and "## Self-check" in markdown
    assert "arXiv" in markdown or "https://" in markdown
    assert f'MetricsRecorder("{name}"' in "\n".join(c.source for c in code)


def _execute(name: str, executed_notebook) -> tuple[dict, str, pathlib.Path]:
    """The session's one papermill run of this lecture (shared with tests/test_notebooks.py)."""
    run = executed_notebook(LECTURES / f"{name}.ipynb")
    assert run.ok, run.error
    metrics_path, out_dir = run.metrics_path, run.artifacts
    nb = nbformat.read(run.output, as_version=4)
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert '"output_type": "error"' not in text
    assert text.count("image/png") >= 2, "the lecture's plots are missing"
    return read_metrics(metrics_path), text, out_dir


def value(metrics: dict, key: str) -> float:
    assert key in metrics, f"metric {key} was not recorded"
    return metrics[key]["value"]


@pytest.mark.notebooks
@pytest.mark.timeout(900)
def test_lecture01_executes_and_measures(executed_notebook):
    metrics, text, out_dir = _execute("01_optimization_overview", executed_notebook)
    assert value(metrics, "ort_prediction_agreement") == 1.0  # exported model = PyTorch model
    assert value(metrics, "linear_intensity_ratio_256_vs_1") == pytest.approx(128.5)  # (2*256*512^2/...) analytic
    assert value(metrics, "batching_gain_llm_decode") > 1.5  # decode steps are bandwidth/overhead-bound
    assert value(metrics, "ridge_point_flop_per_byte") > 1
    assert "p99" in text and "usd_per_1M" in text
    for png in ("latency_histogram.png", "batch_curve.png", "roofline.png"):
        assert (out_dir / png).exists()
    results = json.loads((out_dir / "lecture01_results.json").read_text())
    assert {r["batch"] for r in results["batch_curve"]} >= {1, 64} and "system" in results


@pytest.mark.notebooks
@pytest.mark.timeout(900)
def test_lecture02_executes_and_measures(executed_notebook):
    metrics, text, out_dir = _execute("02_tensorrt_deep_dive", executed_notebook)
    from optcourse.techniques.ort import op_counts

    raw, fused = op_counts(out_dir / "digits_unfused.onnx"), op_counts(out_dir / "digits_all.onnx")
    assert raw["BatchNormalization"] == 9 and fused["BatchNormalization"] == 0
    assert sum(fused.values()) < sum(op_counts(out_dir / "digits_basic.onnx").values()) < sum(raw.values())
    assert value(metrics, "fusion_node_reduction") >= 2.0
    assert value(metrics, "int8_accuracy_drop") <= 0.03
    qdq = op_counts(out_dir / "digits_int8_entropy.onnx")
    assert qdq["QuantizeLinear"] > 0 and qdq["DequantizeLinear"] > 0
    assert (out_dir / "calibration_histograms.png").exists()
    assert "entropy (KL)" in text and "percentile 99.99" in text
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        assert "TensorRT cell skipped" in text
    assert "fusion_speedup" in metrics and "int8_qdq_speedup" in metrics


@pytest.mark.notebooks
@pytest.mark.timeout(900)
def test_lecture03_executes_and_measures(executed_notebook):
    metrics, text, out_dir = _execute("03_onnx_runtime", executed_notebook)
    from optcourse.techniques.ort import op_counts

    counts = {lvl: sum(op_counts(out_dir / f"minilm_{lvl}.onnx").values()) for lvl in ("disable", "basic", "extended", "all")}
    assert counts["disable"] > counts["basic"] > counts["extended"] >= counts["all"]
    assert op_counts(out_dir / "minilm_extended.onnx")["com.microsoft:BiasGelu"] > 0
    assert value(metrics, "minilm_node_reduction") > 1.2
    assert value(metrics, "ort_vs_pytorch_min_cosine") > 0.9999
    assert metrics["profile_top_op_share"]["op"] in ("MatMul", "FusedMatMul", "Gemm")
    assert list(out_dir.glob("minilm_profile*.json")), "the profiler wrote no trace"
    assert "CPUExecutionProvider" in text


@pytest.mark.notebooks
@pytest.mark.timeout(900)
def test_lecture04_executes_and_measures(executed_notebook):
    metrics, text, out_dir = _execute("04_quantization_techniques", executed_notebook)
    assert 5.0 < value(metrics, "sqnr_db_per_bit") < 7.5  # ~6.02 dB per bit
    assert value(metrics, "per_channel_gain_db") > 1.0
    assert value(metrics, "smoothquant_error_reduction") > 1.0
    assert 20 < value(metrics, "fp8_e4m3_weight_sqnr_db") < 40  # 3 mantissa bits
    assert value(metrics, "minilm_int8_min_cosine") > 0.95
    assert value(metrics, "minilm_int8_size_ratio") > 3.0
    assert value(metrics, "awq_error_reduction_int3") > 1.0
    assert "MatMulInteger" in json.dumps(__import__("optcourse.techniques.ort", fromlist=["op_counts"])
                                         .op_counts(out_dir / "minilm_int8_dynamic.onnx"))
    for png in ("error_vs_bits.png", "outliers.png", "float_formats.png", "awq_search.png"):
        assert (out_dir / png).exists()
