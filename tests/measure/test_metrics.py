"""The metrics convention (optcourse.measure.metrics)."""
import json
import math

import pytest

from optcourse.measure import metrics


def test_recorder_writes_json_after_each_record(tmp_path):
    path = tmp_path / "m.json"
    rec = metrics.MetricsRecorder("labx", path, "cpu")
    rec.record("speedup", 2.5, unit="x", spread=[2.1, 2.9])
    data = json.loads(path.read_text())
    assert data["notebook"] == "labx" and data["profile"] == "cpu"
    assert data["metrics"]["speedup"] == {"value": 2.5, "unit": "x", "spread": [2.1, 2.9]}
    rec.record("accuracy", 0.99)
    assert set(metrics.read_metrics(path)) == {"speedup", "accuracy"}


def test_recorder_rejects_nan(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        metrics.MetricsRecorder("labx", tmp_path / "m.json").record("x", math.nan)


def test_recorder_probes_the_system_once_not_at_every_record(tmp_path, monkeypatch):
    from optcourse.measure import bench

    calls = []
    monkeypatch.setattr(bench, "system_info", lambda: calls.append(1) or {"hostname": "probe"})
    rec = metrics.MetricsRecorder("labx", tmp_path / "m.json", "cpu")
    for i in range(5):
        rec.record(f"m{i}", float(i))
    assert len(calls) == 1
    assert json.loads((tmp_path / "m.json").read_text())["system"] == {"hostname": "probe"}
