"""ONNX export helpers (optcourse.techniques.export): dynamic axes, numerical agreement with PyTorch."""
import numpy as np
import pytest
import torch

from optcourse.techniques import export as ox
from optcourse.models.digits import load_digits_resnet


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    model = load_digits_resnet()
    return model, ox.export_digits(model, tmp_path_factory.mktemp("onnx") / "digits.onnx")


def test_digits_export_has_a_dynamic_batch_and_agrees_with_pytorch(digits):
    model, path = digits
    assert ox.input_shapes(path) == {"x": ["batch", 1, 64, 64]}
    import onnx

    proto = onnx.load(str(path))  # lab 01 Task 1 asks for the same file: opset 17, output "logits" (batch, 10)
    assert {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}["ai.onnx"] == 17
    assert [(o.name, [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]) for o in proto.graph.output] \
        == [("logits", ["batch", 10])]
    assert ox.has_dynamic_axis(path, "x", 0) and not ox.has_dynamic_axis(path, "x", 2)
    x = torch.rand(5, 1, 64, 64)
    for n in (1, 5):
        assert ox.run_onnx(path, {"x": x[:n].numpy()})[0].shape == (n, 10)
        assert ox.max_abs_diff(model, path, {"x": x[:n].numpy()}) < 1e-4


def test_export_folds_batchnorm_and_sets_eval(tmp_path):
    import onnx

    model = load_digits_resnet().train()
    path = ox.export_digits(model, tmp_path / "d.onnx")
    assert not model.training
    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)


def test_export_without_dynamic_axes_freezes_the_batch(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = ox.export_onnx(model, (torch.zeros(2, 3),), tmp_path / "lin.onnx", ["x"], ["y"], dynamic_axes=None)
    assert ox.input_shapes(path)["x"] == [2, 3]
    with pytest.raises(Exception):
        ox.run_onnx(path, {"x": np.zeros((4, 3), np.float32)})


@pytest.mark.slow
def test_minilm_feeds_shapes():
    from transformers import AutoTokenizer

    from optcourse.models.minilm import minilm_dir

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    feeds = ox.minilm_feeds(tokenizer, ["a b c", "a"])
    assert set(feeds) == {"input_ids", "attention_mask"} and feeds["input_ids"].dtype == np.int64
    assert feeds["input_ids"].shape == feeds["attention_mask"].shape and feeds["attention_mask"][1].sum() < feeds["attention_mask"][0].sum()
    assert ox.minilm_feeds(tokenizer, ["a"], pad_to=16)["input_ids"].shape == (1, 16)


@pytest.mark.slow
def test_minilm_export_dynamic_batch_and_sequence(tmp_path):
    from optcourse.models.minilm import load_minilm

    tokenizer, bert = load_minilm()
    path = ox.export_minilm(tmp_path / "minilm.onnx", tokenizer, bert)
    assert ox.input_shapes(path) == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    encoder = ox.MiniLMEncoder(bert)
    for texts in (["one"], ["a much longer sentence than the others, with commas", "short", "mid length"]):
        feeds = ox.minilm_feeds(tokenizer, texts)
        assert ox.max_abs_diff(encoder, path, feeds) < 1e-4
        emb = ox.run_onnx(path, feeds)[0]
        assert emb.shape == (len(texts), 384) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
