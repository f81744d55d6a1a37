"""QDQ quantization and engine helpers (optcourse.techniques.engines); TensorRT parts run only where it imports."""
import importlib.util

import numpy as np
import pytest
import torch

from optcourse.measure.bench import ort_session
from optcourse.techniques import calibration as cal
from optcourse.techniques import engines
from optcourse.techniques.export import export_onnx


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, padding=1),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3)).eval()
    tmp = tmp_path_factory.mktemp("eng")
    path = export_onnx(model, (torch.zeros(2, 1, 8, 8),), tmp / "conv.onnx", ["x"], ["y"], {"x": {0: "batch"}, "y": {0: "batch"}})
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.normal(size=(4, 1, 8, 8)).astype(np.float32)} for _ in range(3)]
    return model, path, feeds, tmp


def test_feeds_reader_yields_each_batch_once_and_rewinds():
    feeds = [{"x": np.zeros(1)}, {"x": np.ones(1)}]
    reader = engines.FeedsReader(feeds)
    assert [reader.get_next()["x"][0], reader.get_next()["x"][0], reader.get_next()] == [0, 1, None]
    reader.rewind()
    assert reader.get_next()["x"][0] == 0


def test_range_overrides_clip_to_the_observed_range():
    stats = {"relu": cal.ActivationStats("relu", 0.0, 6.0, np.zeros(2), np.zeros(3), np.zeros(1), 1),
             "conv": cal.ActivationStats("conv", -2.0, 9.0, np.zeros(2), np.zeros(3), np.zeros(1), 1)}
    out = engines.range_overrides({"relu": 4.0, "conv": 5.0, "free": 1.5}, stats)
    assert (float(out["relu"][0]["rmin"]), float(out["relu"][0]["rmax"])) == (0.0, 4.0)
    assert (float(out["conv"][0]["rmin"]), float(out["conv"][0]["rmax"])) == (-2.0, 5.0)
    assert (float(out["free"][0]["rmin"]), float(out["free"][0]["rmax"])) == (-1.5, 1.5)


def test_quantize_qdq_for_the_cpu_uses_u8_activations_and_per_channel_int8_weights(conv_model):
    model, path, feeds, tmp = conv_model
    q = engines.quantize_qdq(path, tmp / "q_cpu.onnx", engines.FeedsReader(feeds))
    summary = engines.qdq_summary(q)
    assert summary["ops"]["QuantizeLinear"] >= 3 and summary["ops"]["DequantizeLinear"] >= 5
    assert "int8" in summary["weight_dtypes"]
    assert summary["scales"]["x"][1].dtype == np.uint8
    per_channel = [v for v in summary["scales"].values() if v[0] is not None and np.size(v[0]) == 8]
    assert per_channel, "the first conv's weight should have one scale per output channel"

    x = feeds[0]["x"]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = ort_session(q).run(None, {"x": x})[0]
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


def test_quantize_qdq_for_tensorrt_is_symmetric_int8(conv_model):
    _, path, feeds, tmp = conv_model
    stats = cal.collect_activation_stats(path, feeds, num_bins=64)
    relu = [n for n in stats if "Relu" in n][0]   # a ReLU output: its own range [0, T] is one-sided
    q = engines.quantize_qdq(path, tmp / "q_trt.onnx", engines.FeedsReader(feeds), target="tensorrt",
                             tensor_overrides=engines.range_overrides({relu: stats[relu].absmax}, stats))
    scales = engines.qdq_summary(q)["scales"]
    zero_points = [zp for _, zp, _ in scales.values() if zp is not None]
    assert len(zero_points) == len(scales) > 2
    assert all(zp.dtype == np.int8 and np.all(zp == 0) for zp in zero_points)
    assert engines.tensorrt_qdq_problems(q) == {}
    with pytest.raises(ValueError):
        engines.quantize_qdq(path, tmp / "bad.onnx", engines.FeedsReader(feeds), target="tpu")


def test_the_cpu_model_is_refused_for_tensorrt_int8(conv_model):
    _, path, feeds, tmp = conv_model
    u8s8 = engines.quantize_qdq(path, tmp / "q_u8.onnx", engines.FeedsReader(feeds))
    problems = engines.tensorrt_qdq_problems(u8s8)
    assert "x" in problems and "uint8" in problems["x"]
    for asked in ({"int8": True}, {}):   # refused whether or not int8 was asked for
        with pytest.raises(ValueError, match="not symmetric INT8"):
            engines.tensorrt_model(u8s8, tmp / "u8.engine", **asked)
    with pytest.raises(ValueError, match="no QuantizeLinear"):
        engines.tensorrt_model(path, tmp / "fp32.engine", int8=True)   # an FP32 model named int8


def test_fp16_model_is_what_an_fp16_engine_parses(conv_model):
    model, path, feeds, tmp = conv_model
    assert engines.onnx_precision(path) == "fp32"
    fp16 = engines.tensorrt_model(path, tmp / "conv16.engine", fp16=True)
    assert fp16 == tmp / "conv16.fp16.onnx" and engines.onnx_precision(fp16) == "fp16"
    x = feeds[0]["x"]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = ort_session(fp16).run(None, {"x": x})[0]          # inputs and outputs stay float32
    assert got.dtype == np.float32 and np.abs(got - ref).max() < 1e-2 * np.abs(ref).max()


def test_fp16_export_keeps_named_layers_fp32(conv_model):
    import onnx

    _, path, _, tmp = conv_model
    gemm = next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Gemm")
    kept = onnx.load(str(engines.fp16_onnx(path, tmp / "keep.onnx", keep_fp32_nodes=[gemm])))
    types = {i.name: i.data_type for i in kept.graph.initializer}
    gemm_node = next(n for n in kept.graph.node if n.name == gemm)
    assert types[gemm_node.input[1]] == onnx.TensorProto.FLOAT
    assert onnx.TensorProto.FLOAT16 in types.values()


def test_profile_with_min_above_opt_is_refused_before_tensorrt():
    with pytest.raises(ValueError, match="min <= opt <= max"):
        engines.check_profile_shapes({"x": ((8, 1, 8, 8), (4, 1, 8, 8), (16, 1, 8, 8))})
    engines.check_profile_shapes({"x": ((1, 1, 8, 8), (4, 1, 8, 8), (16, 1, 8, 8))})


@pytest.mark.skipif(engines.tensorrt_available(), reason="checks the message where TensorRT is missing")
def test_tensorrt_paths_say_so_when_tensorrt_is_missing(conv_model):
    _, path, _, tmp = conv_model
    with pytest.raises(RuntimeError, match="TensorRT is not usable here"):
        engines.build_tensorrt_engine(path, tmp / "none.engine", shapes={"x": ((1, 1, 8, 8),) * 3})
    assert not (tmp / "none.engine").exists()
    with pytest.raises(RuntimeError, match="TensorRT is not usable here"):
        engines.TensorRTRunner(tmp / "none.engine")


def test_threshold_overrides_set_the_activation_scale(conv_model):
    _, path, feeds, tmp = conv_model
    stats = cal.collect_activation_stats(path, feeds, num_bins=64)
    relu = [n for n in stats if "Relu" in n][0]
    thresholds = {relu: stats[relu].absmax / 2}
    q = engines.quantize_qdq(path, tmp / "q_over.onnx", engines.FeedsReader(feeds),
                             tensor_overrides=engines.range_overrides(thresholds, stats))
    scale = float(np.ravel(engines.qdq_summary(q)["scales"][relu][0])[0])
    assert scale == pytest.approx(thresholds[relu] / 255, rel=1e-5)


def test_dynamic_quantization_of_matmuls(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    path = export_onnx(model, (torch.zeros(2, 16),), tmp_path / "mlp.onnx", ["x"], ["y"], {"x": {0: "batch"}})
    q = engines.quantize_dynamic_int8(path, tmp_path / "mlp_dyn.onnx")
    ops = engines.qdq_summary(q)["ops"]
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops


@pytest.mark.slow
def test_speedup_is_measured_in_a_separate_process(conv_model):
    _, path, feeds, _ = conv_model
    result = engines.measure_speedup_subprocess(path, path, feeds[0], rounds=2, repeat=2)
    assert set(result) == {"speedup", "baseline_ms", "candidate_ms"} and result["speedup"] > 0


def test_tensorrt_availability_is_reported_honestly():
    has = importlib.util.find_spec("tensorrt") is not None
    assert engines.tensorrt_available() == (has and torch.cuda.is_available())


@pytest.mark.skipif(not engines.tensorrt_available(), reason="TensorRT and a CUDA GPU are needed")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_engine_build_serialize_reload(conv_model, precision):
    model, path, feeds, tmp = conv_model
    cache = tmp / "timing.cache"
    source = path
    if precision == "int8":
        source = engines.quantize_qdq(path, tmp / "q_trt.onnx", engines.FeedsReader(feeds), target="tensorrt")
    built_from = engines.tensorrt_model(source, tmp / f"conv_{precision}.engine", fp16=precision == "fp16",
                                        int8=precision == "int8")
    engine = engines.build_tensorrt_engine(source, tmp / f"conv_{precision}.engine", timing_cache_path=cache,
                                           shapes={"x": ((1, 1, 8, 8), (4, 1, 8, 8), (16, 1, 8, 8))},
                                           fp16=precision == "fp16", int8=precision == "int8")
    assert engine.stat().st_size > 0 and cache.stat().st_size > 0
    runner = engines.TensorRTRunner(engine)
    assert runner.profile_shapes("x") == ((1, 1, 8, 8), (4, 1, 8, 8), (16, 1, 8, 8))
    assert len(runner.layers()) > 0
    for n in (1, 7):
        batch = {"x": np.repeat(feeds[0]["x"][:1], n, axis=0)}
        diff = engines.max_difference_from_onnxruntime(runner, built_from, batch)
        assert diff["y"] < 5e-2, diff
    with pytest.raises(ValueError, match="outside the engine's optimization profile"):
        runner(x=torch.zeros(17, 1, 8, 8))
