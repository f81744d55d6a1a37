"""Thresholds per hardware profile: the one place that loads, validates and checks them.

``autograder/thresholds/<profile>.yaml`` maps notebook -> metric -> ``{min: x}`` / ``{max: x}``;
``check_thresholds`` turns a notebook's metrics into table rows. A metric with a threshold that the
notebook did not report fails: silence never passes. A rule may add ``requires: <component>`` or
``unless: <component>`` (``tensorrt``, ``vllm``): on a machine without (with) it the rule does not
apply and its row says so (SKIP), because the notebook measured the other real path there.
The runner and the tests read the bounds only through ``load_thresholds``.
"""
from __future__ import annotations

import math
import pathlib

import yaml

from optcourse.core.paths import AUTOGRADER_DIR

THRESHOLDS_DIR = AUTOGRADER_DIR / "thresholds"


def load_thresholds(profile: str, directory: pathlib.Path = THRESHOLDS_DIR) -> dict:
    from optcourse.core.hardware import PROFILES

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
    """Rows (item, metric, measured, unit, threshold, passed) for every threshold of ``notebook``.

    ``installed`` maps components (``tensorrt``, ``vllm``) to their version or None, as the notebook's
    metrics file recorded them (default: this process's ``hardware.capabilities()``).
    """
    if installed is None:
        from optcourse.core.hardware import capabilities

        installed = capabilities()
    rows = []
    for metric, rule in (thresholds.get(notebook) or {}).items():
        entry = metrics.get(metric)
        value = entry["value"] if entry else None
        applies, why = rule_applies(rule, installed)
        row = {"item": notebook, "metric": metric, "measured": value, "unit": (entry or {}).get("unit", ""),
               "threshold": describe_rule(rule), "passed": check_value(value, rule) if applies else True}
        if not applies:
            row.update(skipped=True, note=why)
        elif entry is None:   # the row's FAIL then says why, in every report and test message
            row["note"] = f"{metric} was not recorded by this run of {notebook}"
        rows.append(row)
    return rows
