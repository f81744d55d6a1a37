"""ONNX Runtime as a graph optimizer (optcourse.techniques.ort), and the unfused digits export it optimizes."""

import json

import pytest

from optcourse.measure.bench import ort_optimization_level
from optcourse.models.digits import load_digits_resnet
from optcourse.techniques.export import export_digits
from optcourse.techniques.ort import op_counts, ort_optimize, profile_op_summary


def test_digits_export_fusion_and_op_counts(tmp_path):
    pytest.importorskip("onnxruntime")
    model = load_digits_resnet()
    raw = export_digits(model, tmp_path / "raw.onnx", fold_batchnorm=False)
    folded = export_digits(model, tmp_path / "folded.onnx")
    assert op_counts(raw)["BatchNormalization"] == 9 and op_counts(folded)["BatchNormalization"] == 0
    basic = ort_optimize(raw, tmp_path / "basic.onnx", "basic")
    assert op_counts(basic)["BatchNormalization"] == 0
    assert sum(op_counts(basic).values()) < sum(op_counts(raw).values())
    with pytest.raises(ValueError):
        ort_optimization_level("maximum")


def test_profile_op_summary(tmp_path):
    events = [{"cat": "Node", "name": "conv1_kernel_time", "dur": 30, "args": {"op_name": "Conv"}},
              {"cat": "Node", "name": "conv2_kernel_time", "dur": 50, "args": {"op_name": "Conv"}},
              {"cat": "Node", "name": "relu_kernel_time", "dur": 20, "args": {"op_name": "Relu"}},
              {"cat": "Node", "name": "relu_fence_before", "dur": 999, "args": {"op_name": "Relu"}},
              {"cat": "Session", "name": "model_run", "dur": 500}]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    rows = profile_op_summary(path)
    assert rows[0] == {"op": "Conv", "calls": 2, "total_us": 80.0, "share": 0.8}
    assert rows[1]["op"] == "Relu" and rows[1]["calls"] == 1
