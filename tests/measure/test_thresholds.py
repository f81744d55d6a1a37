"""Threshold files and checks (optcourse.measure.thresholds)."""
import pytest

from optcourse.measure import thresholds


def test_check_thresholds_min_max_and_missing():
    rules = {"labx": {"speedup": {"min": 1.5}, "drop": {"max": 0.01}, "acc": {"min": 0.9, "max": 1.0},
                           "unreported": {"min": 0}}}
    got = {"speedup": {"value": 1.4}, "drop": {"value": 0.005}, "acc": {"value": 0.95}}
    rows = {r["metric"]: r for r in thresholds.check_thresholds("labx", got, rules)}
    assert rows["speedup"]["passed"] is False and rows["speedup"]["threshold"] == ">= 1.5"
    assert rows["drop"]["passed"] is True
    assert rows["acc"]["passed"] is True and rows["acc"]["threshold"] == ">= 0.9 and <= 1"
    assert rows["unreported"]["passed"] is False and rows["unreported"]["measured"] is None
    assert rows["unreported"]["note"] == "unreported was not recorded by this run of labx"
    assert "note" not in rows["speedup"]   # a measured miss shows its value, not a note


def test_conditional_thresholds_follow_the_installed_components(tmp_path):
    rules = {"lab": {"vllm_tok_s": {"min": 100, "requires": "vllm"}, "hf_tok_s": {"min": 10, "unless": "vllm"}}}
    got = {"vllm_tok_s": {"value": 50.0}}
    with_vllm = {r["metric"]: r for r in thresholds.check_thresholds("lab", got, rules, {"vllm": "0.32.0"})}
    assert with_vllm["vllm_tok_s"]["passed"] is False                  # applies, and 50 < 100
    assert with_vllm["hf_tok_s"]["skipped"] and "vllm is installed" in with_vllm["hf_tok_s"]["note"]
    without = {r["metric"]: r for r in thresholds.check_thresholds("lab", {}, rules, {"vllm": None})}
    assert without["vllm_tok_s"]["skipped"] and without["hf_tok_s"]["passed"] is False   # silence still fails
    (tmp_path / "cpu.yaml").write_text("lab:\n  x: {min: 1, requires: tpu}\n")
    with pytest.raises(ValueError, match="requires must be one of"):
        thresholds.load_thresholds("cpu", tmp_path)


def test_otherwise_is_the_bound_where_the_condition_fails(tmp_path):
    rules = {"lab": {"int8_speedup": {"min": 1.8, "unless": "int8_saturates", "otherwise": {"min": 1.2}}}}
    got = {"int8_speedup": {"value": 1.5}}
    vnni = thresholds.check_thresholds("lab", got, rules, {"int8_saturates": False})[0]
    assert vnni["passed"] is False and vnni["threshold"] == ">= 1.8" and "note" not in vnni
    avx2 = thresholds.check_thresholds("lab", got, rules, {"int8_saturates": True})[0]
    assert avx2["passed"] is True and avx2["threshold"] == ">= 1.2" and not avx2.get("skipped")
    assert "no VNNI" in avx2["note"] and ">= 1.8 elsewhere" in avx2["note"]
    slow = thresholds.check_thresholds("lab", {"int8_speedup": {"value": 1.1}}, rules, {"int8_saturates": True})[0]
    assert slow["passed"] is False
    # records from before the CPU property was recorded: the main bound
    assert thresholds.check_thresholds("lab", got, rules, {})[0]["threshold"] == ">= 1.8"
    for bad in ("{min: 1, otherwise: {min: 0.5}}", "{min: 1, unless: vllm, otherwise: 0.5}",
                "{min: 1, unless: vllm, otherwise: {min: 0.5, unless: tensorrt}}"):
        (tmp_path / "cpu.yaml").write_text(f"lab:\n  x: {bad}\n")
        with pytest.raises(ValueError, match="otherwise"):
            thresholds.load_thresholds("cpu", tmp_path)


def test_threshold_files_exist_for_every_profile_and_are_valid():
    for profile in ("cpu", "cuda"):
        data = thresholds.load_thresholds(profile)
        assert isinstance(data, dict)


def test_unknown_profile_and_bad_rule(tmp_path):
    with pytest.raises(ValueError, match="unknown hardware profile"):
        thresholds.load_thresholds("tpu")
    (tmp_path / "cpu.yaml").write_text("labx:\n  speedup: 2\n")
    with pytest.raises(ValueError, match="min.*max"):
        thresholds.load_thresholds("cpu", tmp_path)
    with pytest.raises(FileNotFoundError):
        thresholds.load_thresholds("cuda", tmp_path)
