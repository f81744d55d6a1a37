"""Performance grading in the trusted process: the grader re-measures the artifact itself.

The artifacts are made here (the digits ResNet exported to FP32 ONNX and quantized to a QDQ INT8
model with onnxruntime.quantization), so these tests do not depend on the labs. No assertion is on
a timing: thresholds are set so that only the mechanism decides the outcome.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from optcourse.autograde import perf
from optcourse.autograde.inner import _copy_artifacts

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from optcourse.models.digits import load_digits_data

    d = tmp_path_factory.mktemp("perf")
    ctx = perf.PerfContext(lab="demo_int8", profile="cpu", workdir=d / "grader")
    fp32 = perf.digits_fp32_reference(perf.PerfContext(lab="demo_int8", profile="cpu", workdir=d))
    x_train = load_digits_data()[0][:64].numpy()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": x_train[i:i + 16]} for i in range(0, 64, 16)])

        def get_next(self):
            return next(self.batches, None)

    int8 = d / "student" / "outputs" / "digits_int8.onnx"
    int8.parent.mkdir(parents=True)
    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    fake = d / "student" / "outputs" / "fp32_named_int8.onnx"
    fake.write_bytes(fp32.read_bytes())
    # what a student's kernel might write to fool a grader that trusts it: never read
    (d / "student" / "outputs" / "metrics.json").write_text(json.dumps({"speedup": 100.0, "accuracy": 1.0}))
    return {"ctx": ctx, "fp32": fp32, "int8": int8, "fake": fake, "dir": d}


def check(**kw):
    base = dict(name="int8_speedup", artifact="outputs/digits_int8.onnx", points=4,
                reference=perf.digits_fp32_reference, data=perf.digits_heldout, require_int8=True,
                min_speedup=0.01, min_accuracy=0.9, rounds=3, repeat=5)
    base.update(kw)
    return perf.OnnxClassifierCheck(**base)


def test_int8_model_is_measured_by_the_grader_and_passes_a_low_bar(models):
    res = perf.run_check(check(), models["int8"], models["ctx"])
    assert res.passed, res.reason
    assert res.score == 4
    m = res.measured
    assert m["speedup"] > 0 and m["speedup"] != 100.0  # measured here, not the student's metrics.json
    assert m["reference_ms"] > 0 and m["student_ms"] > 0
    assert m["accuracy"] >= 0.9  # re-measured on the held-out digits split
    assert m["profile"] == "cpu"


def test_threshold_of_the_profile_is_applied(models):
    res = perf.run_check(check(min_speedup=1000.0), models["int8"], models["ctx"])
    assert not res.passed and res.score == 0
    assert "below the required 1000x" in res.reason and "cpu profile" in res.reason
    res = perf.run_check(check(min_accuracy=1.01), models["int8"], models["ctx"])
    assert not res.passed and "held-out accuracy" in res.reason


def test_thresholds_file_wins_over_the_default(models, monkeypatch):
    ctx = perf.PerfContext(lab="demo_int8", profile="cpu", workdir=models["dir"] / "g2")
    ctx.cache[("thresholds", "cpu")] = {"grader_int8_speedup": {"min": 999.0}}
    res = perf.run_check(check(speedup_metric="grader_int8_speedup"), models["int8"], ctx)
    assert not res.passed and "999x" in res.reason


def test_fp32_model_named_int8_is_rejected(models):
    res = perf.run_check(check(), models["fake"], models["ctx"])
    assert not res.passed and res.score == 0
    assert "not an INT8 model" in res.reason


def test_missing_broken_and_external_data_artifacts(models, tmp_path):
    assert "did not save" in perf.run_check(check(), None, models["ctx"]).reason
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    assert "not a valid ONNX model" in perf.run_check(check(), junk, models["ctx"]).reason
    import onnx

    model = onnx.load(str(models["int8"]))
    ext = tmp_path / "ext.onnx"
    onnx.save_model(model, str(ext), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    res = perf.run_check(check(), ext, models["ctx"])
    assert not res.passed and "external files" in res.reason


def test_registry_plugs_a_lab_in():
    c = check(name="demo_registry_check")
    perf.register("demo_registry_lab", c)
    perf.register("demo_registry_lab", c)  # same name: replaced, not duplicated
    assert perf.checks_for("demo_registry_lab") == [c]
    assert perf.checks_for("no_such_lab") == []


def test_artifact_copy_refuses_links_and_escapes(tmp_path):
    src = tmp_path / "kernel"
    (src / "outputs").mkdir(parents=True)
    (src / "outputs" / "model.onnx").write_bytes(b"abc")
    secret = tmp_path / "gradebook.db"
    secret.write_text("secret")
    (src / "outputs" / "link.onnx").symlink_to(secret)
    got = _copy_artifacts(str(src), ["outputs/model.onnx", "outputs/link.onnx", "../gradebook.db", "outputs/none.onnx"],
                          str(tmp_path / "out"))
    assert got["outputs/model.onnx"] == "ok"
    assert got["outputs/link.onnx"].startswith("missing")  # O_NOFOLLOW: a link is never followed
    assert "../gradebook.db" not in got
    assert got["outputs/none.onnx"].startswith("missing")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["outputs__model.onnx"]


@pytest.fixture(scope="module")
def lab01_artifacts(tmp_path_factory):
    """What lab01's Task 3 saves (outputs/digits_int8_t3.onnx): the digits ResNet exported with input "x",
    percentile thresholds from calibration statistics, a U8S8 per-channel QDQ model; and an FP32 model
    under the same name."""
    from optcourse import calibration as cal
    from optcourse import engines
    from optcourse import onnx_export as ox
    from optcourse.models.digits import load_digits_data, load_digits_resnet

    d = tmp_path_factory.mktemp("lab01")
    fp32 = ox.export_digits(load_digits_resnet(), d / "digits_fp32.onnx")
    images = load_digits_data()[0][:256].numpy()
    batches = [{"x": images[i:i + 32]} for i in range(0, len(images), 32)]
    stats = cal.collect_activation_stats(fp32, batches)
    thresholds = cal.thresholds_from_stats(stats, "percentile")
    good = engines.quantize_qdq(fp32, d / "good" / "outputs" / "digits_int8_t3.onnx", engines.FeedsReader(batches),
                                tensor_overrides=engines.range_overrides(thresholds, stats))
    fake = d / "fake" / "outputs" / "digits_int8_t3.onnx"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(fp32.read_bytes())
    return {"good": good, "fake": fake, "dir": d}


def test_lab01_registers_its_int8_artifact():
    [c] = perf.checks_for("lab01_tensorrt_int8")
    assert c.artifact == "outputs/digits_int8_t3.onnx" and c.require_int8 and c.points == 2
    from optcourse.metrics import load_thresholds

    for profile in ("cpu", "cuda"):  # the lab's own thresholds of each profile
        ctx = perf.PerfContext(lab="lab01_tensorrt_int8", profile=profile)
        speedup = load_thresholds(profile)["lab01_tensorrt_int8"][c.speedup_metric]["min"]
        assert speedup >= 1.2 and c.threshold(ctx, c.speedup_metric, None) == speedup
        assert c.threshold(ctx, c.accuracy_drop_metric, None, bound="max") == 1.0


def test_lab01_check_passes_the_real_artifact_and_rejects_fp32_named_int8(lab01_artifacts):
    import dataclasses

    [c] = perf.checks_for("lab01_tensorrt_int8")
    ctx = perf.PerfContext(lab="lab01_tensorrt_int8", profile="cpu", workdir=lab01_artifacts["dir"] / "grader")
    fake = perf.run_check(c, lab01_artifacts["fake"], ctx)
    assert not fake.passed and fake.score == 0 and "not an INT8 model" in fake.reason
    # the speed bar is lowered here only: a shared CI machine must not decide this test (the real bar is 1.8x)
    res = perf.run_check(dataclasses.replace(c, speedup_metric=None, min_speedup=0.01, rounds=3, repeat=5),
                         lab01_artifacts["good"], ctx)
    assert res.passed and res.score == 2, res.reason
    assert res.measured["accuracy_drop_points"] <= 1.0 and res.measured["max_accuracy_drop_points"] == 1.0
    assert res.reason.startswith("passed: speedup")
