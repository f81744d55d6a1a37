"""The metrics convention, and threshold checks per hardware profile.

Convention (one for every notebook):
- a notebook's ``parameters`` cell has ``metrics_path = None``; the runner sets it to
  ``results/metrics/<notebook>.json``;
- the notebook creates ``MetricsRecorder(name, metrics_path, profile)`` and calls
  ``record(metric, value, unit=...)``; each call rewrites the JSON file, so a notebook that fails
  half-way still leaves what it measured;
- ``autograder/thresholds/<profile>.yaml`` maps notebook -> metric -> ``{min: x}`` / ``{max: x}``;
  ``check_thresholds`` turns a metrics file into table rows. A metric with a threshold that the
  notebook did not report fails: silence never passes. A rule may add ``requires: <component>`` or
  ``unless: <component>`` (``tensorrt``, ``vllm``): on a machine without (with) it the rule does not
  apply and its row says so (SKIP), because the notebook measured the other real path there;
- ``record_path(component, available, real_path, fallback)`` prints and stores which real path the
  notebook took (TensorRT or its stand-in, vLLM or transformers' continuous batching); the runner's
  report lists them.

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
        self.paths: dict[str, str] = {}

    def record(self, name: str, value: float, unit: str = "", **details) -> float:
        """Store one measured value (and optional details such as spread); returns the value."""
        value = float(value)
        if math.isnan(value):
            raise ValueError(f"metric {name!r} is NaN")
        self.metrics[name] = {"value": value, "unit": unit, **details}
        self._write()
        return value

    def record_path(self, component: str, available: bool, real_path: str, fallback: str) -> str:
        """Say (print) and store which path this run takes for ``component``; returns the line."""
        from optcourse.hardware import describe_path

        line = describe_path(component, available, real_path, fallback)
        self.paths[component] = line
        print(line)
        self._write()
        return line

    def _write(self) -> None:
        if self.path is None:
            return
        from optcourse.bench import save_results

        save_results(self.path, {"notebook": self.notebook, "profile": self.profile, "metrics": self.metrics,
                                 "paths": self.paths})

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
            for key in ("requires", "unless"):
                if key in rule and rule[key] not in COMPONENTS:
                    raise ValueError(f"{path}: {notebook}.{metric}: {key} must be one of {COMPONENTS}")
    return data


# components whose presence changes what a notebook measures (keys of hardware.capabilities())
COMPONENTS = ("tensorrt", "vllm")


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


def rule_applies(rule: dict, installed: dict | None) -> tuple[bool, str]:
    """Whether a rule's ``requires``/``unless`` condition holds on a machine with ``installed`` components."""
    installed = installed or {}
    if "requires" in rule and not installed.get(rule["requires"]):
        return False, f"not applicable: {rule['requires']} is not installed"
    if "unless" in rule and installed.get(rule["unless"]):
        return False, f"not applicable: {rule['unless']} is installed"
    return True, ""


def check_thresholds(notebook: str, metrics: dict, thresholds: dict, installed: dict | None = None) -> list[dict]:
    """Rows (item, metric, measured, threshold, passed) for every threshold of ``notebook``.

    ``installed`` maps components (``tensorrt``, ``vllm``) to their version or None, as the notebook's
    metrics file recorded them (default: this process's ``hardware.capabilities()``).
    """
    if installed is None:
        from optcourse.hardware import capabilities

        installed = capabilities()
    rows = []
    for metric, rule in (thresholds.get(notebook) or {}).items():
        entry = metrics.get(metric)
        value = entry["value"] if entry else None
        applies, why = rule_applies(rule, installed)
        row = {"item": notebook, "metric": metric, "measured": value, "threshold": describe_rule(rule),
               "passed": check_value(value, rule) if applies else True}
        if not applies:
            row.update(skipped=True, note=why)
        rows.append(row)
    return rows


def read_run(path: str | os.PathLike) -> dict:
    """A notebook's whole metrics file (metrics, paths, system), or {} when it wrote none."""
    path = pathlib.Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def read_metrics(path: str | os.PathLike) -> dict:
    return read_run(path).get("metrics", {})
