"""Lectures 1-4: the lecture conventions, and executing headlessly (papermill, smoke parameters) with demos
whose outputs would be wrong if a demo broke. The metrics' bounds live in autograder/thresholds/*.yaml only
(tests/course/test_notebooks.py checks them on the same run); committed-clean is tests/test_repo.py's check."""

import json
import pathlib

import nbformat
import pytest

from optcourse.measure.metrics import read_metrics
from optcourse.core.paths import REPO_ROOT

LECTURES = REPO_ROOT / "lectures"
NOTEBOOKS = ["01_optimization_overview", "02_tensorrt_deep_dive", "03_onnx_runtime", "04_quantization_techniques"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_takeaways_and_references(name):
    nb = nbformat.read(LECTURES / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] is code[0], "the first code cell, and only it, is tagged `parameters`"
    for line in ('device = "auto"', "smoke = True", "metrics_path = None", 'output_dir = "outputs"'):
        assert line in params[0].source
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "## Key takeaways" in markdown and "## Self-check" in markdown
    assert "arXiv" in markdown or "https://" in markdown
    assert f'notebook.setup("{name}"' in "\n".join(c.source for c in code)


def _execute(name: str, executed_notebook) -> tuple[dict, str, pathlib.Path]:
    """The session's one papermill run of this lecture (shared with tests/course/test_notebooks.py)."""
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
    from optcourse.core.hardware import last_level_cache_bytes
    from optcourse.measure.profiling import linear_cost

    out_features = metrics["linear_intensity_ratio_256_vs_1"]["out_features"]   # sized from the last-level cache
    llc = last_level_cache_bytes() or (32 << 20)
    assert 4096 * out_features * 4 >= 3 * llc and out_features % 256 == 0
    analytic = (linear_cost(4096, out_features, batch=256, bias=False)["intensity"]
                / linear_cost(4096, out_features, batch=1, bias=False)["intensity"])
    assert value(metrics, "linear_intensity_ratio_256_vs_1") == pytest.approx(analytic)
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
    qdq = op_counts(out_dir / "digits_int8_entropy.onnx")
    assert qdq["QuantizeLinear"] > 0 and qdq["DequantizeLinear"] > 0
    assert (out_dir / "calibration_histograms.png").exists()
    assert "entropy (KL)" in text and "percentile 99.99" in text
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        assert "TensorRT cell skipped" in text
    assert "fusion_speedup" in metrics and "int8_qdq_speedup" in metrics
    # the models a TensorRT 11 build takes its precision from
    assert value(metrics, "s8s8_tensorrt_rejects") == 0 and value(metrics, "s8s8_accuracy_drop") <= 0.03
    assert value(metrics, "fp16_model_top1_agreement") >= 0.99
    assert op_counts(out_dir / "digits_fp16.onnx")["Cast"] >= 2  # FP32 in and out, and around the FP32 fc


@pytest.mark.notebooks
@pytest.mark.timeout(900)
def test_lecture03_executes_and_measures(executed_notebook):
    metrics, text, out_dir = _execute("03_onnx_runtime", executed_notebook)
    from optcourse.techniques.ort import op_counts

    counts = {lvl: sum(op_counts(out_dir / f"minilm_{lvl}.onnx").values()) for lvl in ("disable", "basic", "extended", "all")}
    assert counts["disable"] > counts["basic"] > counts["extended"] >= counts["all"]
    assert op_counts(out_dir / "minilm_extended.onnx")["com.microsoft:BiasGelu"] > 0
    assert metrics["profile_top_op_share"]["op"] in ("MatMul", "FusedMatMul", "Gemm")
    assert list(out_dir.glob("minilm_profile*.json")), "the profiler wrote no trace"
    assert "CPUExecutionProvider" in text


@pytest.mark.notebooks
@pytest.mark.timeout(900)
def test_lecture04_executes_and_measures(executed_notebook):
    metrics, text, out_dir = _execute("04_quantization_techniques", executed_notebook)
    assert "MatMulInteger" in json.dumps(__import__("optcourse.techniques.ort", fromlist=["op_counts"])
                                         .op_counts(out_dir / "minilm_int8_dynamic.onnx"))
    for png in ("error_vs_bits.png", "outliers.png", "float_formats.png", "awq_search.png"):
        assert (out_dir / png).exists()
