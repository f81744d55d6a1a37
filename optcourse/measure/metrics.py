"""The metrics convention: what a notebook measured, written where the runner reads it.

Convention (one for every notebook):
- a notebook's ``parameters`` cell has ``metrics_path = None``; the runner sets it to
  ``results/metrics/<notebook>.json``;
- the notebook creates ``MetricsRecorder(name, metrics_path, profile)`` and calls
  ``record(metric, value, unit=...)``; each call rewrites the JSON file, so a notebook that fails
  half-way still leaves what it measured;
- the bounds a metric must meet are in ``autograder/thresholds/<profile>.yaml``, read and checked by
  ``optcourse.measure.thresholds``;
- ``record_path(component, available, real_path, fallback)`` prints and stores which real path the
  notebook took (TensorRT or its stand-in, vLLM or transformers' continuous batching); the runner's
  report lists them.

For grades, the autograder re-measures artifacts in its own process (autograder/README.md); these
metrics are what CI and GPU runners check of the instructor's solution notebooks.
"""
from __future__ import annotations

import json
import math
import os
import pathlib


class MetricsRecorder:
    def __init__(self, notebook: str, path: str | os.PathLike | None = None, profile: str | None = None):
        self.notebook = notebook
        self.path = pathlib.Path(path) if path else None
        self.profile = profile
        self.metrics: dict[str, dict] = {}
        self.paths: dict[str, str] = {}
        self.system: dict | None = None  # probed once, at the first write: record() is called often

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
        from optcourse.core.hardware import describe_path

        line = describe_path(component, available, real_path, fallback)
        self.paths[component] = line
        print(line)
        self._write()
        return line

    def _write(self) -> None:
        if self.path is None:
            return
        from optcourse.measure.bench import save_results, system_info

        if self.system is None:
            self.system = system_info()
        save_results(self.path, {"notebook": self.notebook, "profile": self.profile, "metrics": self.metrics,
                                 "paths": self.paths, "system": self.system})

    def __repr__(self) -> str:
        lines = [f"{k} = {v['value']:.4g} {v['unit']}".rstrip() for k, v in self.metrics.items()]
        return "\n".join([f"metrics of {self.notebook} ({self.profile}):"] + lines)


def read_run(path: str | os.PathLike) -> dict:
    """A notebook's whole metrics file (metrics, paths, system), or {} when it wrote none."""
    path = pathlib.Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def read_metrics(path: str | os.PathLike) -> dict:
    return read_run(path).get("metrics", {})
