"""Performance grading by the trusted grader: the grader measures the student's artifact itself.

A lab that asks for a speedup makes its notebook save an artifact (an ONNX model, ...). The sandbox
copies that file out (regular files only, size-capped); after every sandbox finished, the parent runs
each check in **its own child process** (``run_check``: forked, with a wall-time limit, an address-space
limit and a CPU-time limit; killed with its process group when the time is up), so an artifact that
never finishes (an ONNX ``Loop`` of 10^13 iterations), eats memory, or is a FIFO costs at most the
check's limit, scores 0 and is flagged, and never blocks the batch. The child sends back only a JSON
result, which the parent clamps to the check's points.

``OnnxClassifierCheck`` measures the model against a reference artifact built in the same run
(``optcourse.measure.bench.compare``: alternating rounds, medians of per-round ratios, one pinned thread), on
grader-only data (``digits_heldout``: a fixed transformation of the digits test split, images no notebook
has), and with ``match_reference`` first checks that the artifact IS the course model quantized: the same
layers (no operator the reference does not use, no control flow), every weight of the reference found,
dequantized, within a tolerance, most of the weighted layers reading 8-bit weights on the path to the
output, predictions that agree with the reference, and a speed-up no larger than ``max_speedup`` (an INT8
version of the same network cannot be 20x faster). What the student's kernel printed or wrote (metrics
JSON, printed speedups) is never read.

A lab plugs in with one ``register(lab, check)`` call: see lab01's at the end of this module.

The thresholds come from ``autograder/thresholds/<profile>.yaml`` (``lab -> metric -> {min: x}``), or
the check's own ``min_speedup`` / ``min_accuracy`` when the file has none.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import resource
import select
import signal
import stat
import time
from typing import Callable

import numpy as np


MAX_MODEL_BYTES = 64 << 20
ALLOWED_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
            "DynamicQuantizeLinear", "QLinearAdd", "QGemm"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
# operators that only move data around: allowed in a student's model even where the reference has none
PLUMBING_OPS = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Shape", "Gather",
                "Concat", "Constant", "Slice"}
# the integer forms of the reference's weighted layers
WEIGHTED_OPS = {"Conv": "Conv", "QLinearConv": "Conv", "ConvInteger": "Conv", "Gemm": "Gemm", "QGemm": "Gemm",
                "MatMul": "MatMul", "QLinearMatMul": "MatMul", "MatMulInteger": "MatMul"}
CHECK_TIMEOUT_S = 120.0          # wall time of one check in its child process (the lab01 check takes ~11 s)
CHECK_MEMORY_BYTES = 4 << 30     # address space the child may add to what it inherited
_RESULT_BYTES = 1 << 20


@dataclasses.dataclass
class CheckResult:
    name: str
    score: float
    max_score: float
    passed: bool
    reason: str
    measured: dict = dataclasses.field(default_factory=dict)
    review: bool = False             # an instructor should look (time/memory limit, not a regular file, grader error)


@dataclasses.dataclass
class PerfContext:
    lab: str
    profile: str | None = None
    workdir: pathlib.Path | None = None
    cache: dict = dataclasses.field(default_factory=dict)

    def resolved_profile(self) -> str:
        if self.profile is None:
            from optcourse.core.hardware import resolve_profile

            self.profile = resolve_profile("auto")
        return self.profile

    def thresholds(self) -> dict:
        """This lab's rules of the profile's thresholds file (``measure.thresholds``: validated; a rule whose
        ``requires``/``unless`` does not hold on this machine gives way to its ``otherwise``, or is left out, so
        the check's default applies)."""
        key = ("thresholds", self.resolved_profile())
        if key not in self.cache:
            from optcourse.core.hardware import capabilities
            from optcourse.measure.thresholds import effective_rule, load_thresholds

            rules = load_thresholds(self.resolved_profile()).get(self.lab) or {}
            installed = capabilities() if any({"requires", "unless"} & set(r) for r in rules.values()) else {}
            bounds = {m: effective_rule(rule, installed)[0] for m, rule in rules.items()}
            self.cache[key] = {m: bound for m, bound in bounds.items() if bound is not None}
        return self.cache[key]


class ArtifactError(Exception):
    """The artifact is unusable; the message is shown to the student."""


def read_regular_file(path: pathlib.Path, limit: int = MAX_MODEL_BYTES) -> bytes:
    """The bytes of a regular file, never following a link and never blocking on a FIFO or a device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise ArtifactError("the model file was not saved (or is not a regular file)") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError("the model file is not a regular file")
        if st.st_size > limit:
            raise ArtifactError(f"the model file is {st.st_size >> 20} MB, more than the {limit >> 20} MB allowed")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ArtifactError(f"the model file is more than the {limit >> 20} MB allowed")
        return data
    finally:
        os.close(fd)


def _subgraphs(model) -> bool:
    import onnx

    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for n in model.graph.node for a in n.attribute)


def load_onnx_safely(path: pathlib.Path) -> bytes:
    """Read a student's ONNX file, refusing external data (a path the grader would open), unknown op
    domains (custom-op libraries) and oversize files. Returns the model bytes for ORT."""
    import onnx

    data = read_regular_file(pathlib.Path(path))
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"the file is not a valid ONNX model ({type(exc).__name__})") from None
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ArtifactError("the model stores weights in external files; save it as one self-contained .onnx file")
    domains = {n.domain for n in model.graph.node} | {o.domain for o in model.opset_import}
    if domains - ALLOWED_DOMAINS:
        raise ArtifactError(f"the model uses custom operator domains {sorted(domains - ALLOWED_DOMAINS)}")
    return data


def _ancestors(model) -> list:
    """The nodes the graph's outputs depend on (a node nobody reads from is not computing the answer)."""
    producer = {out: n for n in model.graph.node for out in n.output if out}
    seen, stack, order = set(), [o.name for o in model.graph.output], []
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        stack.extend(i for i in node.input if i)
    return order


def _is_8bit(model, name: str, producers: dict) -> bool:
    import onnx

    inits = {t.name: t for t in model.graph.initializer}
    if name in inits:
        t = inits[name]
        return t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    node = producers.get(name)
    return node is not None and node.op_type in ("QuantizeLinear", "DynamicQuantizeLinear")


def is_int8(data: bytes) -> tuple[bool, str]:
    """Whether the model really computes in INT8: a quantization op whose input is an 8-bit tensor (or an
    integer op), AND 8-bit weights, both on the path to the model's output (an unused DequantizeLinear
    next to a float model counts for nothing)."""
    import onnx

    model = onnx.load_model_from_string(data)
    inits = {t.name: t for t in model.graph.initializer}
    producers = {out: n for n in model.graph.node for out in n.output if out}
    used = _ancestors(model)
    ops, int8_weights = set(), set()
    for n in used:
        if n.op_type == "DequantizeLinear" and n.input and _is_8bit(model, n.input[0], producers):
            ops.add(n.op_type)
            if n.input[0] in inits:
                int8_weights.add(n.input[0])
        elif n.op_type in INT8_OPS - QDQ_OPS:
            ops.add(n.op_type)
            int8_weights.update(i for i in n.input if i in inits and _is_8bit(model, i, producers))
    int8_weights = {w for w in int8_weights if np.prod(inits[w].dims or [1]) > 16}
    if not ops or not int8_weights:
        return False, (f"the model is not an INT8 model: {len(ops)} quantization op types and {len(int8_weights)} 8-bit "
                       "weight tensors on the path to its output (whatever its file name says)")
    return True, f"INT8 ops {sorted(ops)}, {len(int8_weights)} 8-bit weight tensors on the path to the output"


def _dequantize(model, name: str, producers: dict) -> tuple[np.ndarray | None, bool]:
    """The float value of a weight input: a float initializer, or DequantizeLinear of an 8-bit one.
    Returns (array or None, whether it is 8-bit)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    if name in inits:
        arr = numpy_helper.to_array(inits[name])
        return (arr.astype(np.float32), False) if arr.dtype.kind == "f" else (None, False)
    node = producers.get(name)
    if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in inits:
        return None, False
    q = numpy_helper.to_array(inits[node.input[0]])
    if q.dtype not in (np.int8, np.uint8) or len(node.input) < 2 or node.input[1] not in inits:
        return None, False
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    zp = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
          if len(node.input) > 2 and node.input[2] in inits else np.zeros_like(scale))
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis % q.ndim] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q.astype(np.float32) - zp) * scale, True


def _weighted_layers(model) -> list[tuple[str, np.ndarray | None, bool, bool]]:
    """(kind, weight as float, 8-bit, on the path to the output) of every Conv/Gemm/MatMul with a constant weight."""
    from onnx import numpy_helper

    producers = {out: n for n in model.graph.node for out in n.output if out}
    inits = {t.name: t for t in model.graph.initializer}
    used = {id(n) for n in _ancestors(model)}
    layers = []
    for n in model.graph.node:
        kind = WEIGHTED_OPS.get(n.op_type)
        if kind is None:
            continue
        if n.op_type in ("Conv", "Gemm", "MatMul"):
            w, q8 = _dequantize(model, n.input[1], producers) if len(n.input) > 1 else (None, False)
        else:  # integer ops: weight, its scale and zero point are inputs
            idx = {"QLinearConv": (3, 4, 5), "QLinearMatMul": (3, 4, 5), "QGemm": (3, 4, 5),
                   "ConvInteger": (1, None, 3), "MatMulInteger": (1, None, 3)}[n.op_type]
            w, q8 = None, False
            if len(n.input) > idx[0] and n.input[idx[0]] in inits:
                q = numpy_helper.to_array(inits[n.input[idx[0]]]).astype(np.float32)
                s = np.float32(1.0)
                if idx[1] is not None and len(n.input) > idx[1] and n.input[idx[1]] in inits:
                    s = numpy_helper.to_array(inits[n.input[idx[1]]]).astype(np.float32)
                if np.ndim(s) == 1 and np.size(s) > 1 and q.ndim >= 1:
                    axis = 0 if n.op_type == "QLinearConv" else q.ndim - 1
                    shape = [1] * q.ndim
                    shape[axis] = -1
                    s = s.reshape(shape)
                w, q8 = q * s, True
        if w is None:
            continue
        layers.append((kind, w, q8, id(n) in used))
    return layers


def check_course_model(data: bytes, reference_path: pathlib.Path, weight_tolerance: float = 0.1,
                       min_int8_fraction: float = 0.5) -> tuple[bool, str]:
    """Whether the student's model is the reference network quantized: no operator the reference does not
    use (quantization and data-moving ops aside), no subgraphs (Loop, If, Scan), the same weighted layers,
    each reference weight found (dequantized, relative error <= ``weight_tolerance``), and at least
    ``min_int8_fraction`` of the weighted layers reading 8-bit weights on the path to the output."""
    import onnx

    student = onnx.load_model_from_string(data)
    reference = onnx.load_model(str(reference_path))
    if _subgraphs(student):
        return False, "the model contains control flow (Loop, If or Scan), which the course model does not"
    ref_ops = {n.op_type for n in reference.graph.node}
    extra = {n.op_type for n in student.graph.node} - ref_ops - INT8_OPS - PLUMBING_OPS
    if extra:
        return False, f"the model uses operators the course model does not: {sorted(extra)[:6]}"
    ref_layers = _weighted_layers(reference)
    layers = _weighted_layers(student)
    count = lambda ls: {k: sum(1 for x in ls if x[0] == k) for k in {x[0] for x in ref_layers + layers}}  # noqa: E731
    if count(layers) != count(ref_layers):
        return False, (f"the model's weighted layers {count(layers)} are not the course model's {count(ref_layers)}: "
                       "quantize the course model itself")
    unused = list(range(len(layers)))
    worst = 0.0
    for kind, w, _, _ in ref_layers:
        best, best_err = None, np.inf
        for i in unused:
            k2, w2, _, _ = layers[i]
            if k2 != kind or w2.shape != w.shape:
                continue
            err = float(np.linalg.norm(w2 - w) / max(float(np.linalg.norm(w)), 1e-12))
            if err < best_err:
                best, best_err = i, err
        if best is None or best_err > weight_tolerance:
            return False, (f"a {kind} weight of shape {list(w.shape)} of the course model is not in the model "
                           f"(closest relative error {best_err:.2g}, at most {weight_tolerance:g} allowed): "
                           "quantize the course model itself")
        unused.remove(best)
        worst = max(worst, best_err)
    int8_used = sum(1 for _, _, q8, on_path in layers if q8 and on_path)
    if int8_used < max(1, min_int8_fraction * len(layers)):
        return False, (f"only {int8_used} of the model's {len(layers)} weighted layers read 8-bit weights on the path to "
                       "its output")
    return True, (f"the course model quantized: {len(layers)} weighted layers, {int8_used} with 8-bit weights, "
                  f"weights within {worst:.3f} of the reference")


# ------------------------------------------------------------------ references and data for the digits ResNet
GRADER_SEED = int(os.environ.get("OPTCOURSE_GRADER_SEED", "20261130"))


def digits_heldout(ctx: PerfContext):
    """Grader-only images: the digits test split shifted by up to 3 pixels, rescaled in brightness and
    with a little noise, with a seed only the grader uses (``OPTCOURSE_GRADER_SEED``). No notebook ever
    had these images, so a model that memorises the public split earns nothing; the FP32 reference still
    classifies them (its accuracy on them is measured in the same run: the thresholds are drops)."""
    if "digits_heldout" not in ctx.cache:
        from optcourse.models.digits import load_digits_data

        _, _, x_test, y_test = load_digits_data()
        x, y = x_test.numpy().copy(), y_test.numpy()
        rng = np.random.default_rng(GRADER_SEED)
        for i in range(len(x)):
            dy, dx = rng.integers(-3, 4, size=2)
            x[i] = np.roll(x[i], (int(dy), int(dx)), axis=(1, 2))
        x = x * rng.uniform(0.85, 1.1, size=(len(x), 1, 1, 1)) + rng.normal(0, 0.03, size=x.shape)
        ctx.cache["digits_heldout"] = (np.clip(x, 0, 1).astype(np.float32), y)
    return ctx.cache["digits_heldout"]


def digits_fp32_reference(ctx: PerfContext) -> pathlib.Path:
    """The reference: the shipped digits ResNet exported to FP32 ONNX by the grader, once per run."""
    if "digits_fp32" not in ctx.cache:
        from optcourse.models.digits import load_digits_resnet
        from optcourse.techniques.export import export_digits

        out = pathlib.Path(ctx.workdir or ".") / "reference_digits_fp32.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        ctx.cache["digits_fp32"] = export_digits(load_digits_resnet(), out)
    return ctx.cache["digits_fp32"]


@dataclasses.dataclass
class OnnxClassifierCheck:
    """Speedup of a student's ONNX classifier over a reference ONNX model, and its accuracy on grader-only data."""

    name: str
    artifact: str                                   # path relative to the notebook's folder
    points: float
    reference: Callable[[PerfContext], pathlib.Path]
    data: Callable[[PerfContext], tuple[np.ndarray, np.ndarray]]
    speedup_metric: str | None = None               # key in the thresholds file (min)
    accuracy_metric: str | None = None              # key in the thresholds file (min)
    accuracy_drop_metric: str | None = None         # key in the thresholds file (max): reference - student, points
    min_speedup: float = 1.2
    min_accuracy: float = 0.9
    max_accuracy_drop: float | None = None          # used when the thresholds file has no accuracy_drop_metric
    require_int8: bool = False
    match_reference: bool = False                   # the artifact must be the reference network (quantized)
    weight_tolerance: float = 0.1                   # relative L2 error of each dequantized weight
    min_agreement: float | None = None              # share of grader images where student and reference agree
    max_speedup: float | None = None                # a larger measured speed-up is implausible: 0, flagged
    batch: int = 32
    rounds: int = 5
    repeat: int = 10
    timeout_s: float = CHECK_TIMEOUT_S
    memory_bytes: int = CHECK_MEMORY_BYTES

    def threshold(self, ctx: PerfContext, metric: str | None, default: float | None, bound: str = "min") -> float | None:
        spec = ctx.thresholds().get(metric) if metric else None
        if isinstance(spec, dict) and bound in spec:
            return float(spec[bound])
        return default

    def prepare(self, ctx: PerfContext) -> None:
        """Build the reference and the data once, in the parent (the children inherit them)."""
        self.reference(ctx)
        self.data(ctx)
        ctx.resolved_profile()
        for metric in (self.speedup_metric, self.accuracy_metric, self.accuracy_drop_metric):
            if metric:
                ctx.thresholds()

    @staticmethod
    def predict(session, x: np.ndarray) -> np.ndarray:
        name = session.get_inputs()[0].name
        try:
            logits = np.concatenate([session.run(None, {name: x[i:i + 256]})[0] for i in range(0, len(x), 256)])
        except Exception as exc:  # noqa: BLE001
            raise ArtifactError(f"the model fails on the grader's images ({type(exc).__name__})") from None
        if logits.ndim != 2 or logits.shape[0] != len(x):
            raise ArtifactError(f"the model returns shape {logits.shape}, expected ({len(x)}, classes)")
        return logits.argmax(1)

    @classmethod
    def accuracy(cls, session, x: np.ndarray, y: np.ndarray) -> float:
        return float((cls.predict(session, x) == y).mean())

    def run(self, path: pathlib.Path, ctx: PerfContext) -> CheckResult:
        from optcourse.core.hardware import int8_saturates
        from optcourse.measure.bench import compare, ort_session

        data = load_onnx_safely(path)
        notes = []
        if self.require_int8:
            ok, why = is_int8(data)
            if not ok:
                return CheckResult(self.name, 0.0, self.points, False, why)
            notes.append(why)
        if self.match_reference:
            ok, why = check_course_model(data, self.reference(ctx), self.weight_tolerance)
            if not ok:
                return CheckResult(self.name, 0.0, self.points, False, why)
            notes.append(why)
        x, y = self.data(ctx)
        try:
            student = ort_session(data, threads=1)
        except Exception as exc:  # noqa: BLE001
            raise ArtifactError(f"ONNX Runtime cannot load the model ({type(exc).__name__}: {str(exc)[:200]})") from None
        reference = ort_session(self.reference(ctx), threads=1)
        name_s, name_r = student.get_inputs()[0].name, reference.get_inputs()[0].name
        pred = self.predict(student, x)
        accuracy = float((pred == y).mean())
        # timed on ONNX Runtime's fast INT8 kernels: on an x86 CPU without VNNI the session above computes exact
        # 16-bit products (bench.ort_session), right for accuracy but slower than what the model is served with
        timed = ort_session(data, threads=1, exact_int8=False) if int8_saturates() else student
        xb = x[: self.batch]
        cmp = compare({"reference": lambda: reference.run(None, {name_r: xb}),
                       "student": lambda: timed.run(None, {name_s: xb})},
                      rounds=self.rounds, repeat=self.repeat, warmup=3, sync=False)
        speedup = cmp.speedup("reference", "student")
        min_speedup = self.threshold(ctx, self.speedup_metric, self.min_speedup)
        min_accuracy = self.threshold(ctx, self.accuracy_metric, self.min_accuracy)
        max_drop = self.threshold(ctx, self.accuracy_drop_metric, self.max_accuracy_drop, bound="max")
        measured = {"speedup": round(speedup, 3), "accuracy": round(accuracy, 4), "min_speedup": min_speedup,
                    "min_accuracy": min_accuracy, "profile": ctx.resolved_profile(),
                    "reference_ms": round(cmp.stats["reference"].median, 3),
                    "student_ms": round(cmp.stats["student"].median, 3)}
        problems = []
        if self.max_speedup is not None and speedup > self.max_speedup:
            measured["max_speedup"] = self.max_speedup
            return CheckResult(self.name, 0.0, self.points, False,
                               f"measured speedup {speedup:.2f}x is implausible for this model (more than "
                               f"{self.max_speedup:g}x): an instructor will look", measured, review=True)
        if speedup < min_speedup:
            problems.append(f"measured speedup {speedup:.2f}x is below the required {min_speedup:g}x")
        if accuracy < min_accuracy:
            problems.append(f"accuracy {accuracy:.3f} on the grader's images is below the required {min_accuracy:g}")
        if max_drop is not None or self.min_agreement is not None:  # against the reference on the same images
            ref_pred = self.predict(reference, x)
            drop = 100 * (float((ref_pred == y).mean()) - accuracy)
            agreement = float((ref_pred == pred).mean())
            measured.update(accuracy_drop_points=round(drop, 3), max_accuracy_drop_points=max_drop,
                            agreement=round(agreement, 4))
            if max_drop is not None and drop > max_drop:
                problems.append(f"accuracy on the grader's images drops {drop:.2f} points from the FP32 reference "
                                f"(at most {max_drop:g})")
            if self.min_agreement is not None and agreement < self.min_agreement:
                problems.append(f"the model agrees with the FP32 reference on {100 * agreement:.1f} % of the grader's "
                                f"images (at least {100 * self.min_agreement:g} %)")
        if problems:
            return CheckResult(self.name, 0.0, self.points, False, "; ".join(problems) + f" ({ctx.resolved_profile()} profile)",
                               measured)
        drop = f", {measured['accuracy_drop_points']:.2f} points below FP32 (<= {max_drop:g})" if max_drop is not None else ""
        return CheckResult(self.name, self.points, self.points, True,
                           f"passed: speedup {speedup:.2f}x (>= {min_speedup:g}x), accuracy {accuracy:.3f} "
                           f"(>= {min_accuracy:g}){drop} on the {ctx.resolved_profile()} profile", measured)


@dataclasses.dataclass
class EngineSloCheck:
    """A student's vLLM engine configuration (lab 03), served by the grader: the configuration's goodput under the
    lab's SLO (``serving.deployment.slo``: an open-loop Poisson load; on a CPU without AVX-512 at a share of the
    reference's capacity measured here first, ``engine.capacity``) over the reference configuration's, both
    measured by the grader in this batch (``serving.engine.measure``). The artifact is a small JSON file of knobs,
    validated (``EngineConfig.from_dict``, ``deployment.check``) before anything starts: nothing else of the
    student's reaches vLLM's command line. Each distinct configuration is measured once per batch and cached in the
    batch's work folder (equal choices get equal grades; the reference is measured once)."""

    name: str
    artifact: str
    points: float
    ratio_metric: str = "slo_goodput_vs_reference"   # key in the thresholds file (min)
    min_ratio: float = 0.8
    min_reference_attainment: float = 0.9            # below it this machine could not serve the SLO: flagged
    timeout_s: float = 900.0                         # two or three server starts (~40 s each on 2 cores) and loads
    memory_bytes: int = 1 << 40                      # vLLM reserves far more address space than it uses

    def prepare(self, ctx: PerfContext) -> None:
        ctx.resolved_profile()
        ctx.thresholds()

    def _folder(self, ctx: PerfContext) -> pathlib.Path:
        folder = pathlib.Path(ctx.workdir or ".") / "engine-slo"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def objective(self, ctx: PerfContext):
        """The SLO of this batch, measured once and cached: the profile's, or, where its rate is a share of the
        reference's capacity on this machine (``deployment.rate_from_capacity``), with that rate."""
        from optcourse.serving import deployment, engine

        cached = self._folder(ctx) / "slo.json"
        if cached.is_file():
            return engine.SLO(**json.loads(cached.read_text()))
        profile = ctx.resolved_profile()
        capacity = None
        if deployment.rate_from_capacity(profile):
            model, random_weights = deployment.model(profile, None, self._folder(ctx))
            table = deployment.slo(profile)
            capacity = engine.capacity(model, deployment.REFERENCE, deployment.prompts(), table.max_tokens,
                                       common_args=deployment.common_args(profile == "cpu", random_weights, profile),
                                       default_kv_bytes=table.kv_budget_bytes,
                                       log_path=self._folder(ctx) / "capacity.log")
        slo = deployment.slo(profile, capacity)
        cached.write_text(json.dumps(dataclasses.asdict(slo)))
        return slo

    def measured(self, config, ctx: PerfContext, slo) -> dict:
        from optcourse.serving import deployment, engine

        # cpu: --enforce-eager (a start in seconds on 2 cores); cuda: compiled with CUDA graphs, as deployed
        folder = self._folder(ctx)
        cached = folder / f"{config.key()}.json"
        if cached.is_file():
            return json.loads(cached.read_text())
        profile = ctx.resolved_profile()
        model, random_weights = deployment.model(profile, None, folder)
        run = engine.measure(model, config, slo, deployment.prompts(),
                             common_args=deployment.common_args(profile == "cpu", random_weights, profile),
                             default_kv_bytes=slo.kv_budget_bytes, log_path=folder / f"{config.key()}.log")
        result = run.as_dict()
        cached.write_text(json.dumps(result))
        return result

    def run(self, path: pathlib.Path, ctx: PerfContext) -> CheckResult:
        from transformers import AutoConfig

        from optcourse.serving import deployment, engine

        profile = ctx.resolved_profile()
        model, _ = deployment.model(profile, None, pathlib.Path(ctx.workdir or ".") / "engine-slo")
        try:
            config = engine.load(read_regular_file(path, limit=engine.MAX_CONFIG_BYTES))
            deployment.check(config, AutoConfig.from_pretrained(model), profile)
        except engine.ConfigError as err:
            raise ArtifactError(f"the engine configuration cannot be served: {err}") from None
        slo = self.objective(ctx)
        reference = self.measured(deployment.REFERENCE, ctx, slo)
        mine = self.measured(config, ctx, slo)
        min_ratio = float((ctx.thresholds().get(self.ratio_metric) or {}).get("min", self.min_ratio))
        ratio = mine["goodput_req_s"] / reference["goodput_req_s"] if reference["goodput_req_s"] > 0 else 0.0
        share = deployment.RATE_SHARE.get(deployment.objective(profile))
        rule = (f"TTFT <= {slo.ttft_ms:g} ms and TPOT <= {slo.tpot_ms:g} ms at {slo.rate_per_s:g} requests/s ("
                + (f"{share:g} x the reference's capacity measured on this machine, " if share else "")
                + f"open loop, {slo.requests} requests of {slo.max_tokens} tokens, {deployment.objective(profile)} objective)")
        measured = {"ratio": round(ratio, 3), "min_ratio": min_ratio, "student": mine, "reference": reference,
                    "slo": dataclasses.asdict(slo)}
        if reference["attainment"] < self.min_reference_attainment:
            return CheckResult(self.name, 0.0, self.points, False,
                               f"the grader's reference configuration met the SLO ({rule}) on only "
                               f"{100 * reference['attainment']:.0f} % of its requests on this machine, so the "
                               "SLO could not be checked: an instructor will look", measured, review=True)
        text = (f"your configuration served {mine['goodput_req_s']:.2f} requests/s within the SLO ({rule}; "
                f"{100 * mine['attainment']:.0f} % of requests, {mine['preemptions']:g} preemptions), the reference "
                f"{reference['goodput_req_s']:.2f}: {ratio:.2f}x")
        if ratio < min_ratio:
            return CheckResult(self.name, 0.0, self.points, False, f"{text}, below the required {min_ratio:g}x",
                               measured)
        return CheckResult(self.name, self.points, self.points, True, f"passed: {text} (>= {min_ratio:g}x)", measured)


# ------------------------------------------------------------------ one check, in its own process
def _vm_bytes() -> int:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _child(fn, w: int, memory_bytes: int, cpu_s: int) -> None:
    """In the forked child: limits, run, one JSON line to the pipe, exit (never returns)."""
    code = 0
    try:
        os.setsid()  # its own process group: the parent kills everything it started
        limit = _vm_bytes() + int(memory_bytes)  # what it inherited plus its budget
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        try:
            res = fn()
            payload = {"result": dataclasses.asdict(res)}
        except ArtifactError as exc:
            payload = {"artifact_error": str(exc)[:2000]}
        except MemoryError:
            payload = {"memory": True}
        except BaseException as exc:  # noqa: BLE001 - any failure is reported, never raised into the grader
            payload = {"error": type(exc).__name__, "text": str(exc)[:300]}
        raw = json.dumps(payload, default=str).encode()[:_RESULT_BYTES]
        view = memoryview(raw)
        while view:
            view = view[os.write(w, view):]
    except BaseException:  # noqa: BLE001
        code = 1
    finally:
        os._exit(code)


def _isolated(fn, name: str, points: float, timeout_s: float, memory_bytes: int) -> CheckResult:
    """Run ``fn() -> CheckResult`` in a forked child with wall-time, CPU-time and memory limits."""
    def zero(reason, review=True, **measured):
        return CheckResult(name, 0.0, points, False, reason, measured, review=review)

    r, w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        _child(fn, w, memory_bytes, int(timeout_s) + 5)
    os.close(w)
    chunks, size, status, timed_out = [], 0, None, False
    try:
        while True:
            left = timeout_s - (time.monotonic() - start)
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([r], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(r, 65536)
                if chunk and size < _RESULT_BYTES:
                    chunks.append(chunk)
                    size += len(chunk)
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                os.set_blocking(r, False)
                try:
                    while size < _RESULT_BYTES and (chunk := os.read(r, 65536)):
                        chunks.append(chunk)
                        size += len(chunk)
                except BlockingIOError:
                    pass
                break
    finally:
        os.close(r)
        try:
            os.killpg(pid, signal.SIGKILL)  # the child and anything it started
        except (ProcessLookupError, PermissionError):
            pass
        if status is None:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    wall = round(time.monotonic() - start, 2)
    if timed_out:
        return zero(f"the check ran longer than its {timeout_s:g} s limit and was stopped (an artifact that never "
                    "finishes, or one far too slow): an instructor will look", wall_s=wall)
    try:
        payload = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    if "artifact_error" in payload:
        return zero(str(payload["artifact_error"]), review=False, wall_s=wall)
    if payload.get("memory"):
        return zero(f"the check ran out of memory (limit {memory_bytes >> 20} MB) and was stopped", wall_s=wall)
    if "error" in payload:
        return zero(f"the grader could not check the artifact ({str(payload['error'])[:80]})", wall_s=wall)
    res = payload.get("result")
    if not isinstance(res, dict):
        if status is not None and os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig in (signal.SIGXCPU, signal.SIGKILL):
                return zero("the check used more than its CPU time limit and was stopped", wall_s=wall)
            return zero(f"the check's process died (signal {sig}): an instructor will look", wall_s=wall)
        return zero("the check's process ended without a result: an instructor will look", wall_s=wall)
    try:
        score = min(max(float(res.get("score", 0.0)), 0.0), float(points))
    except (TypeError, ValueError):
        score = 0.0
    measured = res.get("measured") if isinstance(res.get("measured"), dict) else {}
    return CheckResult(name, score, float(points), bool(res.get("passed")),
                       str(res.get("reason", ""))[:2000], {**measured, "wall_s": wall}, review=bool(res.get("review")))


def run_check(check, path: pathlib.Path | None, ctx: PerfContext) -> CheckResult:
    """Run one check in its own process (``check.timeout_s``, ``check.memory_bytes``); a missing, special or
    bad artifact, a check that runs out of time or memory, or a grader bug is a zero with the reason, never a
    crash or a stalled batch."""
    points = float(getattr(check, "points", 0))
    if path is None:
        return CheckResult(check.name, 0.0, points, False, f"no artifact: the notebook did not save {check.artifact}")
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return CheckResult(check.name, 0.0, points, False, f"no artifact: the notebook did not save {check.artifact}")
    if not stat.S_ISREG(mode):
        return CheckResult(check.name, 0.0, points, False,
                           f"the artifact {check.artifact} is not a regular file (a link, FIFO, device or folder)",
                           review=True)
    prepare = getattr(check, "prepare", None)
    if prepare is not None:
        try:
            prepare(ctx)
        except Exception as exc:  # noqa: BLE001 - a grader bug must not lose the batch
            return CheckResult(check.name, 0.0, points, False,
                               f"the grader could not prepare the check ({type(exc).__name__})", review=True)
    return _isolated(lambda: check.run(pathlib.Path(path), ctx), check.name, points,
                     float(getattr(check, "timeout_s", CHECK_TIMEOUT_S)),
                     int(getattr(check, "memory_bytes", CHECK_MEMORY_BYTES)))


REGISTRY: dict[str, list] = {}


def register(lab: str, check) -> None:
    """Add a performance check for ``lab`` (replaces a check of the same name)."""
    REGISTRY[lab] = [c for c in REGISTRY.get(lab, []) if c.name != check.name] + [check]


def checks_for(lab: str) -> list:
    return list(REGISTRY.get(lab, []))


# lab01 Task 3: the test cell test_task3_qdq saves the student's QDQ INT8 digits model (input "x") as
# outputs/digits_int8_t3.onnx; the grader checks it is the course's digits ResNet quantized, then re-measures
# it against its own FP32 export on grader-only images, batch 32, one thread, with the lab's thresholds
# (cpu: >= 1.8x, cuda: >= 1.4x, from the thresholds YAML; accuracy drop <= 1 point; a speed-up above 8x is implausible).
register("lab01_tensorrt_int8", OnnxClassifierCheck(
    name="int8_speedup", artifact="outputs/digits_int8_t3.onnx", points=2,
    reference=digits_fp32_reference, data=digits_heldout,
    speedup_metric="digits_int8_speedup_vs_ort_fp32_b32",
    accuracy_drop_metric="digits_int8_accuracy_drop_points", require_int8=True,
    match_reference=True, min_agreement=0.95, max_speedup=8.0))

# lab03 Task 6: the test cell test_task6_engine_config saves the student's engine configuration as
# outputs/engine_config.json; the grader serves it and the reference under the lab's SLO (goodput ratio >= 0.8).
register("lab03_vllm_deployment", EngineSloCheck(name="slo_goodput", artifact="outputs/engine_config.json", points=3))
