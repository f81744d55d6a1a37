"""ONNX Runtime as a graph optimizer (optcourse.techniques.ort), and the unfused digits export it optimizes."""

import json

import pytest

from optcourse.measure.bench import ort_optimization_level
from optcourse.models.digits import load_digits_resnet
from optcourse.techniques.export import export_digits
from optcourse.techniques.ort import op_counts, ort_optimize, profile_op_summary, transformer_optimize


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


def test_transformer_optimizer_fuses_eager_attention(tmp_path):
    pytest.importorskip("onnxruntime")
    import numpy as np

    from optcourse.models.minilm import load_minilm
    from optcourse.techniques.export import export_minilm_hidden_states, run_onnx

    tokenizer, model = load_minilm()
    model.set_attn_implementation("eager")  # the MatMul-Softmax-MatMul pattern the optimizer matches
    src = export_minilm_hidden_states(tmp_path / "minilm.onnx", tokenizer, model, seq_len=16)
    dst, fused = transformer_optimize(src, tmp_path / "fused.onnx", num_heads=12, hidden_size=384)
    assert fused["Attention"] == 6 and op_counts(dst)["com.microsoft:Attention"] == 6
    feeds = {k: np.ones((2, 16), dtype=np.int64) for k in ("input_ids", "attention_mask")}
    feeds["token_type_ids"] = np.zeros((2, 16), dtype=np.int64)
    assert np.abs(run_onnx(src, feeds)[0] - run_onnx(dst, feeds)[0]).max() < 1e-3
