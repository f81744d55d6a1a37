"""Performance grading in the trusted process: the grader measures the student's artifact itself.

A lab that asks for a speedup makes its notebook save an artifact (an ONNX model, ...). The sandbox
copies that file out (regular files only, size-capped); this module loads it in the grader's own
process, measures it against a reference artifact built or loaded in the same run
(``optcourse.bench.compare``: alternating rounds, medians of per-round ratios, one pinned thread),
re-measures accuracy on held-out data, and applies the current hardware profile's threshold. What
the student's kernel printed or wrote (metrics JSON, printed speedups) is never read.

A lab plugs in with one ``register(lab, check)`` call: see lab01's at the end of this module.

The thresholds come from ``autograder/thresholds/<profile>.yaml`` (``lab -> metric -> {min: x}``), or
the check's own ``min_speedup`` / ``min_accuracy`` when the file has none.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable

import numpy as np

from optcourse.paths import AUTOGRADER_DIR

MAX_MODEL_BYTES = 64 << 20
ALLOWED_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
            "DynamicQuantizeLinear", "QLinearAdd", "QGemm"}


@dataclasses.dataclass
class CheckResult:
    name: str
    score: float
    max_score: float
    passed: bool
    reason: str
    measured: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PerfContext:
    lab: str
    profile: str | None = None
    workdir: pathlib.Path | None = None
    cache: dict = dataclasses.field(default_factory=dict)

    def resolved_profile(self) -> str:
        if self.profile is None:
            from optcourse.hardware import resolve_profile

            self.profile = resolve_profile("auto")
        return self.profile

    def thresholds(self) -> dict:
        key = ("thresholds", self.resolved_profile())
        if key not in self.cache:
            import yaml

            path = AUTOGRADER_DIR / "thresholds" / f"{self.resolved_profile()}.yaml"
            data = yaml.safe_load(path.read_text()) if path.exists() else {}
            self.cache[key] = (data or {}).get(self.lab) or {}
        return self.cache[key]


class ArtifactError(Exception):
    """The artifact is unusable; the message is shown to the student."""


def load_onnx_safely(path: pathlib.Path) -> bytes:
    """Read a student's ONNX file, refusing external data (a path the grader would open), unknown op
    domains (custom-op libraries) and oversize files. Returns the model bytes for ORT."""
    import onnx

    if path.is_symlink() or not path.is_file():
        raise ArtifactError("the model file was not saved (or is not a regular file)")
    data = path.read_bytes()
    if len(data) > MAX_MODEL_BYTES:
        raise ArtifactError(f"the model file is {len(data) >> 20} MB, more than the {MAX_MODEL_BYTES >> 20} MB allowed")
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


def is_int8(data: bytes) -> tuple[bool, str]:
    """Whether the model really computes in INT8: quantize/dequantize or integer ops AND 8-bit weights."""
    import onnx

    model = onnx.load_model_from_string(data)
    ops = {n.op_type for n in model.graph.node} & INT8_OPS
    int8_weights = sum(1 for t in model.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
                       and np.prod(t.dims or [1]) > 16)
    if not ops or not int8_weights:
        return False, (f"the model is not an INT8 model: {len(ops)} quantization op types, {int8_weights} 8-bit "
                       "weight tensors (whatever its file name says)")
    return True, f"INT8 ops {sorted(ops)}, {int8_weights} 8-bit weight tensors"


# ------------------------------------------------------------------ references and data for the digits ResNet
def digits_heldout(ctx: PerfContext):
    """The digits test split (never used for training or calibration in the course)."""
    if "digits_heldout" not in ctx.cache:
        from optcourse.models.digits import load_digits_data

        _, _, x_test, y_test = load_digits_data()
        ctx.cache["digits_heldout"] = (x_test.numpy(), y_test.numpy())
    return ctx.cache["digits_heldout"]


def digits_fp32_reference(ctx: PerfContext) -> pathlib.Path:
    """The reference: the shipped digits ResNet exported to FP32 ONNX by the grader, once per run."""
    if "digits_fp32" not in ctx.cache:
        import torch

        from optcourse.models.digits import IMAGE_SIZE, load_digits_resnet

        out = pathlib.Path(ctx.workdir or ".") / "reference_digits_fp32.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        model = load_digits_resnet()
        torch.onnx.export(model, (torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE),), str(out), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
        ctx.cache["digits_fp32"] = out
    return ctx.cache["digits_fp32"]


@dataclasses.dataclass
class OnnxClassifierCheck:
    """Speedup of a student's ONNX classifier over a reference ONNX model, and its held-out accuracy."""

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
    batch: int = 32
    rounds: int = 5
    repeat: int = 10

    def threshold(self, ctx: PerfContext, metric: str | None, default: float | None, bound: str = "min") -> float | None:
        spec = ctx.thresholds().get(metric) if metric else None
        if isinstance(spec, dict) and bound in spec:
            return float(spec[bound])
        return default

    @staticmethod
    def accuracy(session, x: np.ndarray, y: np.ndarray) -> float:
        name = session.get_inputs()[0].name
        try:
            logits = np.concatenate([session.run(None, {name: x[i:i + 256]})[0] for i in range(0, len(x), 256)])
        except Exception as exc:  # noqa: BLE001
            raise ArtifactError(f"the model fails on the held-out images ({type(exc).__name__})") from None
        if logits.ndim != 2 or logits.shape[0] != len(y):
            raise ArtifactError(f"the model returns shape {logits.shape}, expected ({len(y)}, classes)")
        return float((logits.argmax(1) == y).mean())

    def run(self, path: pathlib.Path, ctx: PerfContext) -> CheckResult:
        from optcourse.bench import compare, ort_session

        data = load_onnx_safely(path)
        notes = []
        if self.require_int8:
            ok, why = is_int8(data)
            if not ok:
                return CheckResult(self.name, 0.0, self.points, False, why)
            notes.append(why)
        x, y = self.data(ctx)
        try:
            student = ort_session_from_bytes(data)
        except Exception as exc:  # noqa: BLE001
            raise ArtifactError(f"ONNX Runtime cannot load the model ({type(exc).__name__}: {str(exc)[:200]})") from None
        reference = ort_session(self.reference(ctx), threads=1)
        name_s, name_r = student.get_inputs()[0].name, reference.get_inputs()[0].name
        accuracy = self.accuracy(student, x, y)
        xb = x[: self.batch]
        cmp = compare({"reference": lambda: reference.run(None, {name_r: xb}),
                       "student": lambda: student.run(None, {name_s: xb})},
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
        if speedup < min_speedup:
            problems.append(f"measured speedup {speedup:.2f}x is below the required {min_speedup:g}x")
        if accuracy < min_accuracy:
            problems.append(f"held-out accuracy {accuracy:.3f} is below the required {min_accuracy:g}")
        if max_drop is not None:  # against the reference's accuracy on the same images
            drop = 100 * (self.accuracy(reference, x, y) - accuracy)
            measured.update(accuracy_drop_points=round(drop, 3), max_accuracy_drop_points=max_drop)
            if drop > max_drop:
                problems.append(f"held-out accuracy drops {drop:.2f} points from the FP32 reference (at most {max_drop:g})")
        if problems:
            return CheckResult(self.name, 0.0, self.points, False, "; ".join(problems) + f" ({ctx.resolved_profile()} profile)",
                               measured)
        drop = f", {measured['accuracy_drop_points']:.2f} points below FP32 (<= {max_drop:g})" if max_drop is not None else ""
        return CheckResult(self.name, self.points, self.points, True,
                           f"passed: speedup {speedup:.2f}x (>= {min_speedup:g}x), accuracy {accuracy:.3f} "
                           f"(>= {min_accuracy:g}){drop} on the {ctx.resolved_profile()} profile", measured)


def ort_session_from_bytes(data: bytes, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def run_check(check, path: pathlib.Path | None, ctx: PerfContext) -> CheckResult:
    """Run one check; a missing or bad artifact is a zero with the reason, never a crash."""
    if path is None or not path.is_file():
        return CheckResult(check.name, 0.0, check.points, False,
                           f"no artifact: the notebook did not save {check.artifact}")
    try:
        return check.run(path, ctx)
    except ArtifactError as exc:
        return CheckResult(check.name, 0.0, check.points, False, str(exc))
    except Exception as exc:  # noqa: BLE001 - a grader bug must not lose the batch
        return CheckResult(check.name, 0.0, check.points, False, f"the grader could not check the artifact ({type(exc).__name__})")


REGISTRY: dict[str, list] = {}


def register(lab: str, check) -> None:
    """Add a performance check for ``lab`` (replaces a check of the same name)."""
    REGISTRY[lab] = [c for c in REGISTRY.get(lab, []) if c.name != check.name] + [check]


def checks_for(lab: str) -> list:
    return list(REGISTRY.get(lab, []))


# lab01 Task 3: the test cell test_task3_qdq saves the student's QDQ INT8 digits model (input "x") as
# outputs/digits_int8_t3.onnx; the grader re-measures it against its own FP32 export, batch 32, one thread,
# with the lab's thresholds (cpu: >= 1.8x, cuda: >= 1.6x; accuracy drop <= 1 point).
register("lab01_tensorrt_int8", OnnxClassifierCheck(
    name="int8_speedup", artifact="outputs/digits_int8_t3.onnx", points=2,
    reference=digits_fp32_reference, data=digits_heldout,
    speedup_metric="digits_int8_speedup_vs_ort_fp32_b32",
    accuracy_drop_metric="digits_int8_accuracy_drop_points", require_int8=True))
