"""The metrics convention, and threshold checks per hardware profile.

Convention (one for every notebook):
- a notebook's ``parameters`` cell has ``metrics_path = None``; the runner sets it to
  ``results/metrics/<notebook>.json``;
- the notebook creates ``MetricsRecorder(name, metrics_path, profile)`` and calls
  ``record(metric, value, unit=...)``; each call rewrites the JSON file, so a notebook that fails
  half-way still leaves what it measured;
- ``autograder/thresholds/<profile>.yaml`` maps notebook -> metric -> ``{min: x}`` / ``{max: x}``;
  ``check_thresholds`` turns a metrics file into table rows. A metric with a threshold that the
  notebook did not report fails: silence never passes.

For grades, the autograder re-measures artifacts in its own process (DESIGN.md); these metrics are
what CI and GPU runners check of the instructor's solution notebooks.
"""
from __future__ import annotations

import json
import math
import os
import pathlib

import yaml

from optcourse.paths import AUTOGRADER_DIR

THRESHOLDS_DIR = AUTOGRADER_DIR / "thresholds"


class MetricsRecorder:
    def __init__(self, notebook: str, path: str | os.PathLike | None = None, profile: str | None = None):
        self.notebook = notebook
        self.path = pathlib.Path(path) if path else None
        self.profile = profile
        self.metrics: dict[str, dict] = {}

    def record(self, name: str, value: float, unit: str = "", **details) -> float:
        """Store one measured value (and optional details such as spread); returns the value."""
        value = float(value)
        if math.isnan(value):
            raise ValueError(f"metric {name!r} is NaN")
        self.metrics[name] = {"value": value, "unit": unit, **details}
        self._write()
        return value

    def _write(self) -> None:
        if self.path is None:
            return
        from optcourse.bench import save_results

        save_results(self.path, {"notebook": self.notebook, "profile": self.profile, "metrics": self.metrics})

    def __repr__(self) -> str:
        lines = [f"{k} = {v['value']:.4g} {v['unit']}".rstrip() for k, v in self.metrics.items()]
        return "\n".join([f"metrics of {self.notebook} ({self.profile}):"] + lines)


def load_thresholds(profile: str, directory: pathlib.Path = THRESHOLDS_DIR) -> dict:
    from optcourse.hardware import PROFILES

    if profile not in PROFILES:
        raise ValueError(f"unknown hardware profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    path = directory / f"{profile}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no threshold file for profile {profile!r} at {path}")
    data = yaml.safe_load(path.read_text()) or {}
    for notebook, metrics in data.items():
        for metric, rule in (metrics or {}).items():
            if not isinstance(rule, dict) or not ({"min", "max"} & set(rule)):
                raise ValueError(f"{path}: {notebook}.{metric} needs a 'min' and/or 'max'")
    return data


def check_value(value: float | None, rule: dict) -> bool:
    if value is None or math.isnan(value):
        return False
    if "min" in rule and value < rule["min"]:
        return False
    if "max" in rule and value > rule["max"]:
        return False
    return True


def describe_rule(rule: dict) -> str:
    parts = []
    if "min" in rule:
        parts.append(f">= {rule['min']:g}")
    if "max" in rule:
        parts.append(f"<= {rule['max']:g}")
    return " and ".join(parts)


def check_thresholds(notebook: str, metrics: dict, thresholds: dict) -> list[dict]:
    """Rows (item, metric, measured, threshold, passed) for every threshold of ``notebook``."""
    rows = []
    for metric, rule in (thresholds.get(notebook) or {}).items():
        entry = metrics.get(metric)
        value = entry["value"] if entry else None
        rows.append({"item": notebook, "metric": metric, "measured": value,
                     "threshold": describe_rule(rule), "passed": check_value(value, rule)})
    return rows


def read_metrics(path: str | os.PathLike) -> dict:
    path = pathlib.Path(path)
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("metrics", {})
