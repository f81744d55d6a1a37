"""Explicitly quantized (QDQ) INT8 models, and TensorRT 11 engines built from them.

Precision lives in the model (lecture 02):
- ``quantize_qdq`` writes an ONNX model with QuantizeLinear/DequantizeLinear pairs (explicit
  quantization) with ONNX Runtime's ``quantize_static(..., quant_format=QuantFormat.QDQ)`` and a
  ``CalibrationDataReader``; calibration ranges can be overridden per tensor with your own thresholds.
  ``fp16_onnx`` writes the FP16 model (sensitive layers can stay FP32).
- ``cuda`` profile with TensorRT 11: ``build_tensorrt_engine`` parses that ONNX file with
  ``trt.OnnxParser`` into a strongly typed network (TensorRT 11 has no other kind: the builder flags
  FP16/INT8 and the INT8 calibrators of TensorRT 10 are gone, so a layer runs in the type the model
  gives it), with an optimization profile (min/opt/max shapes of the dynamic batch) and a timing cache;
  ``TensorRTRunner`` deserializes and runs it, and lists its layers through the engine inspector.
- ``cpu`` profile: ONNX Runtime's CPU provider runs the same kind of QDQ graph (it fuses Q/DQ pairs into
  integer kernels).

The two profiles need two INT8 encodings, for a hardware reason: TensorRT's ONNX parser takes only
symmetric INT8 (zero point 0, "S8S8") for activations and weights, while ORT's fast x86 kernels
(AVX-512 VNNI ``vpdpbusd`` multiplies *unsigned* by signed bytes) want UINT8 activations with INT8
weights ("U8S8"; an S8S8 model runs hardly faster than FP32 there). ``target="tensorrt"`` writes the
former, ``target="ort-cpu"`` the latter, from the same calibration ranges.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import pathlib
import subprocess
import sys
import tempfile
from typing import Iterable

import numpy as np


def tensorrt_available() -> bool:
    """True when the ``tensorrt`` Python package imports and a CUDA GPU is visible."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    from optcourse.core.hardware import cuda_available

    return cuda_available()


# ---------------------------------------------------------------------------------------------------
# QDQ quantization with ONNX Runtime
# ---------------------------------------------------------------------------------------------------
def _reader_base():
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


class FeedsReader(_reader_base()):
    """A ``CalibrationDataReader`` over a list of feed dicts (``{input_name: array}``)."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]):
        self.feeds = list(feeds)
        self._it = iter(self.feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self.feeds)


def range_overrides(thresholds: dict[str, float], stats: dict | None = None) -> dict[str, list[dict]]:
    """``TensorQuantOverrides`` for ``quantize_static``: the range of each tensor becomes
    ``[-T, T]`` clipped to what calibration saw (``stats[name].min/max``), so a ReLU output keeps 0 as
    its lower end."""
    out = {}
    for name, t in thresholds.items():
        t = float(t)
        lo, hi = -t, t
        if stats is not None and name in stats:
            lo, hi = max(lo, float(stats[name].min)), min(hi, float(stats[name].max))
            lo, hi = min(lo, 0.0), max(hi, 0.0)
        out[name] = [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
    return out


def quantize_qdq(fp32_path, out_path, reader, *, target: str = "ort-cpu", per_channel: bool = True,
                 op_types: list[str] | None = None, nodes_to_exclude: list[str] | None = None,
                 tensor_overrides: dict | None = None, calibrate_method: str = "minmax") -> pathlib.Path:
    """Write an explicitly quantized (QDQ) INT8 model of ``fp32_path`` to ``out_path``.

    ``reader``: a ``CalibrationDataReader``. ``target``: ``"ort-cpu"`` (UINT8 activations, INT8 weights)
    or ``"tensorrt"`` (symmetric INT8 activations and weights, zero points 0, float biases: what TensorRT's
    ONNX parser takes). ``tensor_overrides``: from ``range_overrides``.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if target not in ("ort-cpu", "tensorrt"):
        raise ValueError("target must be 'ort-cpu' or 'tensorrt'")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    extra = {"ActivationSymmetric": target == "tensorrt", "WeightSymmetric": True,
             # TensorRT's parser takes no INT32 DequantizeLinear ("only activation types allowed as input
             # to this layer"): its biases stay float, and it fuses them into the INT8 kernel itself
             "QuantizeBias": target != "tensorrt"}
    if tensor_overrides:
        extra["TensorQuantOverrides"] = tensor_overrides
    out_path = pathlib.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with quiet():
        quantize_static(str(fp32_path), str(out_path), reader, quant_format=QuantFormat.QDQ,
                        per_channel=per_channel,
                        activation_type=QuantType.QInt8 if target == "tensorrt" else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=op_types,
                        nodes_to_exclude=nodes_to_exclude, calibrate_method=methods[calibrate_method],
                        extra_options=extra)
    return out_path


def quantize_dynamic_int8(fp32_path, out_path, per_channel: bool = True,
                          op_types: list[str] | None = None) -> pathlib.Path:
    """Dynamic quantization: INT8 weights, activation scales computed at run time per batch
    (``MatMul``/``Gemm`` only by default): the usual choice for transformers on CPU."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_path = pathlib.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with quiet():
        quantize_dynamic(str(fp32_path), str(out_path), per_channel=per_channel, weight_type=QuantType.QInt8,
                         op_types_to_quantize=op_types or ["MatMul", "Gemm"])
    return out_path


@contextlib.contextmanager
def quiet():
    """ORT's quantizer logs a pre-processing hint on the root logger at every call: silence it (notebooks
    stay readable, and nbgrader scores a test cell that writes to stderr as failed)."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def qdq_summary(path) -> dict:
    """What a quantized ONNX file contains: op counts, and the scale/zero point of each quantized
    tensor (``scales[name] = (scale array, zero point array, axis)``)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    ops: dict[str, int] = {}
    scales = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
        if node.op_type == "QuantizeLinear":
            axis = next((a.i for a in node.attribute if a.name == "axis"), None)
            zp = inits.get(node.input[2]) if len(node.input) > 2 else None
            scales[node.input[0]] = (inits.get(node.input[1]), zp, axis)
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:  # a quantized weight
            axis = next((a.i for a in node.attribute if a.name == "axis"), None)
            zp = inits.get(node.input[2]) if len(node.input) > 2 else None
            scales[node.input[0]] = (inits.get(node.input[1]), zp, axis)
    weight_types = sorted({str(inits[n.input[0]].dtype) for n in model.graph.node
                           if n.op_type == "DequantizeLinear" and n.input[0] in inits})
    return {"ops": ops, "scales": scales, "weight_dtypes": weight_types}


# ---------------------------------------------------------------------------------------------------
# precision lives in the model (TensorRT 11 builds every network strongly typed)
# ---------------------------------------------------------------------------------------------------
def fp16_onnx(fp32_path, out_path, keep_fp32_nodes: list[str] | None = None) -> pathlib.Path:
    """Write an FP16 copy of an FP32 ONNX model: the precision TensorRT 11 builds, since it no longer
    lowers FP32 layers to FP16 on a builder flag. Inputs and outputs stay FP32 (Cast nodes inside), so
    callers feed the same arrays; ``keep_fp32_nodes`` names layers that stay FP32 (sensitive ones: a
    softmax, a final norm), which a strongly typed build then runs in FP32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True,
                                     node_block_list=keep_fp32_nodes)
    out_path = pathlib.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return out_path


def onnx_precision(path) -> str:
    """The precision a strongly typed build takes from this model: ``"int8"`` when it has Q/DQ nodes,
    else ``"fp16"`` when its weights are FP16, else ``"fp32"``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "fp32"


def tensorrt_qdq_problems(path) -> dict[str, str]:
    """Quantized tensors of a QDQ model that TensorRT's ONNX parser rejects, ``{tensor: why}``: codes other
    than INT8 (UINT8 activations of the CPU's U8S8 model, INT32 biases) and non-zero zero points ("TRT
    only supports symmetric quantization"). Empty for ``quantize_qdq(..., target="tensorrt")``."""
    problems = {}
    for name, (_, zero_point, _) in qdq_summary(path)["scales"].items():
        if zero_point is None:
            continue
        if zero_point.dtype != np.int8:
            problems[name] = f"{zero_point.dtype} codes"
        elif np.any(zero_point != 0):
            problems[name] = f"zero points {sorted(set(np.ravel(zero_point).tolist()))[:4]}"
    return problems


def check_profile_shapes(shapes: dict[str, tuple[tuple, tuple, tuple]]) -> None:
    """An optimization profile needs min <= opt <= max in every dimension; say which input breaks it
    before TensorRT does (its message names no tensor)."""
    for name, (lo, opt, hi) in shapes.items():
        if not (len(lo) == len(opt) == len(hi)):
            raise ValueError(f"profile of {name!r}: min/opt/max have different ranks: {lo}, {opt}, {hi}")
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise ValueError(f"profile of {name!r}: needs min <= opt <= max in every dimension, got "
                             f"min {tuple(lo)}, opt {tuple(opt)}, max {tuple(hi)}")


def tensorrt_model(onnx_path, engine_path, *, fp16: bool = False, int8: bool = False) -> pathlib.Path:
    """The ONNX file a TensorRT 11 build of ``onnx_path`` should parse, given the precision asked for.

    TensorRT 10's ``fp16``/``int8`` builder flags are gone; here they are requests checked against the
    model. ``fp16`` on an FP32 model: its FP16 export (``fp16_onnx``) is written next to the engine.
    ``int8``: the model must already be a QDQ model. Any QDQ model must be symmetric (S8S8, float
    biases), as ``quantize_qdq(target="tensorrt")`` writes it.
    """
    precision = onnx_precision(onnx_path)
    if int8 and precision != "int8":
        raise ValueError(f"int8 asked for, but {onnx_path} has no QuantizeLinear/DequantizeLinear nodes: "
                         "TensorRT 11 takes INT8 from the model; quantize it with "
                         "engines.quantize_qdq(..., target='tensorrt')")
    if precision == "int8":  # checked with or without the int8 request: TensorRT would refuse it anyway
        problems = tensorrt_qdq_problems(onnx_path)
        if problems:
            listed = "; ".join(f"{k}: {v}" for k, v in list(problems.items())[:4])
            raise ValueError(f"{onnx_path} is not symmetric INT8 ({len(problems)} tensors, e.g. {listed}): "
                             "TensorRT's ONNX parser takes INT8 codes with zero points 0 and float biases. "
                             "The U8S8 model is the CPU's; "
                             "quantize again with engines.quantize_qdq(..., target='tensorrt')")
        if fp16:
            raise ValueError("fp16 together with int8 was TensorRT 10's weak typing; in TensorRT 11 a QDQ "
                             "model's float layers run in the type the model gives them")
        return pathlib.Path(onnx_path)
    if fp16 and precision == "fp32":
        return fp16_onnx(onnx_path, pathlib.Path(engine_path).with_suffix(".fp16.onnx"))
    return pathlib.Path(onnx_path)


# ---------------------------------------------------------------------------------------------------
# TensorRT 11 (cuda profile; only runs where `tensorrt` imports and a GPU is visible)
# ---------------------------------------------------------------------------------------------------
def require_tensorrt():
    """``import tensorrt``, or a RuntimeError that says why it cannot run here (never a stand-in)."""
    if not tensorrt_available():
        raise RuntimeError("TensorRT is not usable here (it needs the `tensorrt` package and a CUDA GPU): "
                           "no engine was built or run; the CPU path is ONNX Runtime on the same ONNX file")
    import tensorrt as trt

    return trt


def build_tensorrt_engine(onnx_path, engine_path, *, shapes: dict[str, tuple[tuple, tuple, tuple]],
                          fp16: bool = False, int8: bool = False, timing_cache_path=None,
                          workspace_bytes: int = 2 << 30) -> pathlib.Path:
    """Parse an ONNX model and build a serialized TensorRT 11 engine at ``engine_path``.

    The network is strongly typed: every layer runs in the type the model gives it (FP16 from an FP16
    export, INT8 between Q/DQ pairs), see ``tensorrt_model`` for what ``fp16``/``int8`` do.
    ``shapes``: input name -> (min, opt, max) of the optimization profile (the dynamic batch range the
    engine serves). ``timing_cache_path``: kernel timings reused by the next build. The build keeps
    detailed layer information, read back with ``TensorRTRunner.layers()``.
    """
    check_profile_shapes(shapes)
    model_path = tensorrt_model(onnx_path, engine_path, fp16=fp16, int8=int8)
    trt = require_tensorrt()

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 11 networks are always strongly typed; NetworkDefinitionCreationFlag.STRONGLY_TYPED is
    # still accepted but deprecated and ignored (the 11.4 bindings' docstring), so no flag is passed
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {model_path}:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer precisions for the inspector
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
    config.add_optimization_profile(profile)
    cache_path = pathlib.Path(timing_cache_path) if timing_cache_path else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise RuntimeError(f"the timing cache {cache_path} was made on another GPU or TensorRT version")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {model_path}")
    engine_path = pathlib.Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    if cache_path:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return engine_path


class TensorRTRunner:
    """Deserialize an engine and run it on torch CUDA tensors (inputs by name, outputs as a dict).

    For timing, place the inputs first (``place``) so a call times the engine alone; a CPU tensor given
    to a call is copied to the GPU inside it. Work runs on PyTorch's current CUDA stream, the one that
    produced the inputs and will read the outputs, so no second stream can race it.
    """

    def __init__(self, engine_path):
        trt = require_tensorrt()
        import torch

        self.trt, self.torch = trt, torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(pathlib.Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {engine_path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def _torch_dtype(self, name):
        trt, torch = self.trt, self.torch
        return {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                trt.int64: torch.int64, trt.int8: torch.int8, trt.bool: torch.bool,
                trt.bfloat16: torch.bfloat16}[self.engine.get_tensor_dtype(name)]

    def profile_shapes(self, name: str) -> tuple[tuple, tuple, tuple]:
        """(min, opt, max) shape of input ``name`` in the engine's optimization profile."""
        return tuple(tuple(dims) for dims in self.engine.get_tensor_profile_shape(name, 0))

    def place(self, **feeds) -> dict:
        """The inputs as contiguous CUDA tensors of the engine's input types (do this before timing)."""
        return {name: self._placed(name, feeds[name]) for name in self.inputs}

    def _placed(self, name, value):
        torch = self.torch
        dtype = self._torch_dtype(name)
        if isinstance(value, torch.Tensor) and value.is_cuda and value.dtype == dtype and value.is_contiguous():
            return value
        return torch.as_tensor(value).to("cuda", dtype).contiguous()

    def __call__(self, **feeds):
        torch = self.torch
        for name, tensor in self.place(**feeds).items():  # no copy for inputs already placed
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                lo, _, hi = self.profile_shapes(name)
                raise ValueError(f"input {name!r} of shape {tuple(tensor.shape)} is outside the engine's "
                                 f"optimization profile (min {lo}, max {hi})")
            self.context.set_tensor_address(name, tensor.data_ptr())
            feeds[name] = tensor  # keeps a copied input alive until the engine has run
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self._torch_dtype(name), device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT's execute_async_v3 failed")
        stream.synchronize()  # a call returns finished outputs, so timing a call times the inference
        return outputs

    def layers(self) -> list[dict]:
        """Per-layer information from TensorRT's engine inspector (JSON; with the detailed profiling
        verbosity of ``build_tensorrt_engine`` it includes each layer's "Format/Datatype" per input and
        output). Call it after a run: with a dynamic batch the formats are known for the context's shapes."""
        inspector = self.engine.create_engine_inspector()
        inspector.execution_context = self.context
        info = json.loads(inspector.get_engine_information(self.trt.LayerInformationFormat.JSON))
        return info["Layers"]


def max_difference_from_onnxruntime(runner: TensorRTRunner, onnx_path, feeds: dict[str, np.ndarray]) -> dict:
    """Largest absolute difference of each engine output from ONNX Runtime's CPU provider running
    ``onnx_path`` (the file the engine was built from) on the same feeds."""
    from optcourse.measure.bench import ort_session

    session = ort_session(onnx_path)
    reference = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    got = runner(**runner.place(**feeds))
    return {name: float(np.max(np.abs(got[name].float().cpu().numpy() - reference[name].astype(np.float32))))
            for name in runner.outputs}


class CudaGraphRunner:
    """A PyTorch model captured into one CUDA graph for one input shape: a call copies the input into the
    graph's static buffer and replays every kernel with a single launch.

    The stand-in for a TensorRT engine on a GPU without TensorRT: for small models most of eager
    PyTorch's time is the CPU launching kernels one by one, which a graph (like an engine) removes.
    The returned tensor is the graph's static output, overwritten by the next call.
    """

    def __init__(self, model, example, warmup: int = 3):
        import torch

        self.static_input = example.detach().clone()
        side = torch.cuda.Stream()              # warm up on a side stream, as torch.cuda.graph requires
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                model(self.static_input)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.static_output = model(self.static_input)

    def __call__(self, x):
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output


# ---------------------------------------------------------------------------------------------------
# timing an artifact in a separate process (what the grader trusts)
# ---------------------------------------------------------------------------------------------------
def measure_speedup_subprocess(baseline, candidate, feeds: dict[str, np.ndarray], threads: int = 1,
                               rounds: int = 5, repeat: int = 5, timeout: int = 300) -> dict:
    """Time two ONNX files with ONNX Runtime's CPU provider in a fresh Python process (alternating
    rounds, ``threads`` pinned); returns ``{"speedup": baseline/candidate, "baseline_ms", "candidate_ms"}``."""
    with tempfile.TemporaryDirectory() as tmp:
        npz = pathlib.Path(tmp) / "feeds.npz"
        np.savez(npz, **feeds)
        cmd = [sys.executable, "-m", "optcourse.techniques.engines", "speedup", str(baseline), str(candidate), str(npz),
               "--threads", str(threads), "--rounds", str(rounds), "--repeat", str(repeat)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"timing process failed:\n{proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def _speedup_main(argv: list[str]) -> None:
    import argparse

    from optcourse.measure.bench import compare, ort_session

    parser = argparse.ArgumentParser()
    parser.add_argument("baseline")
    parser.add_argument("candidate")
    parser.add_argument("feeds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    feeds = dict(np.load(args.feeds))
    # the speed of ONNX Runtime's fast kernels: on a CPU without VNNI, 16-bit products (ort_session's exact_int8,
    # which the accuracy checks use) would time a slower path than the one the model is served with
    base = ort_session(args.baseline, threads=args.threads, exact_int8=False)
    cand = ort_session(args.candidate, threads=args.threads, exact_int8=False)
    result = compare({"baseline": lambda: base.run(None, feeds), "candidate": lambda: cand.run(None, feeds)},
                     rounds=args.rounds, repeat=args.repeat)
    print(json.dumps({"speedup": result.speedup("baseline", "candidate"),
                      "baseline_ms": result.stats["baseline"].median,
                      "candidate_ms": result.stats["candidate"].median}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "speedup":
        _speedup_main(sys.argv[2:])
    else:
        sys.exit("usage: python -m optcourse.techniques.engines speedup BASELINE.onnx CANDIDATE.onnx FEEDS.npz")
