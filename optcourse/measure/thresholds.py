"""Thresholds per hardware profile: the one place that loads, validates and checks them.

``autograder/thresholds/<profile>.yaml`` maps notebook -> metric -> ``{min: x}`` / ``{max: x}``;
``check_thresholds`` turns a notebook's metrics into table rows. A metric with a threshold that the
notebook did not report fails: silence never passes. A rule may add ``requires: <component>`` or
``unless: <component>`` (``tensorrt``, ``vllm``, ``int8_saturates``, ``avx512``): on a machine without (with) it the rule
does not apply and its row says so (SKIP), because the notebook measured the other real path there. Such a rule
may carry ``otherwise: {min: y}``, the bound that applies instead on the other machines (e.g. INT8 speed-ups on
an x86 CPU without VNNI, whose INT8 kernels are slower: ``hardware.int8_saturates``).
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
            if "otherwise" in rule:
                other = rule["otherwise"]
                if not ({"requires", "unless"} & set(rule)) or not isinstance(other, dict) \
                        or not ({"min", "max"} & set(other)) or set(other) - {"min", "max"}:
                    raise ValueError(f"{path}: {notebook}.{metric}: 'otherwise' needs 'requires' or 'unless' beside "
                                     "it and only a 'min' and/or 'max' in it")
    return data


# what changes what a notebook measures (keys of hardware.capabilities()): installed components, x86 CPUs without
# VNNI, whose INT8 kernels are slower (and saturate without ``reduce_range``), and CPUs without AVX-512 (vLLM)
COMPONENTS = ("tensorrt", "vllm", "int8_saturates", "avx512")
CONDITION_WORDS = {"int8_saturates": ("this CPU has VNNI INT8 instructions",
                                      "this CPU has no VNNI INT8 instructions (x86 AVX2 only)"),
                   "avx512": ("this CPU has no AVX-512 (vLLM's CPU build runs its slower AVX2 kernels)",
                              "this CPU has AVX-512")}


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


def _failed_condition(rule: dict, installed: dict | None) -> str | None:
    """Why a rule's ``requires``/``unless`` does not hold on a machine with ``installed`` (None: it holds)."""
    installed = installed or {}
    for key, present in (("requires", False), ("unless", True)):
        component = rule.get(key)
        if component is not None and bool(installed.get(component)) == present:
            words = CONDITION_WORDS.get(component, (f"{component} is not installed", f"{component} is installed"))
            return words[1] if present else words[0]
    return None


def effective_rule(rule: dict, installed: dict | None) -> tuple[dict | None, str]:
    """The bound that holds on this machine: the rule itself, its ``otherwise`` where its condition fails
    (with a note that says why), or None (SKIP) with the reason."""
    why = _failed_condition(rule, installed)
    if why is None:
        return rule, ""
    if "otherwise" in rule:
        return rule["otherwise"], f"{why}: the bound for such machines ({describe_rule(rule)} elsewhere)"
    return None, f"not applicable: {why}"


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
        bound, why = effective_rule(rule, installed)
        row = {"item": notebook, "metric": metric, "measured": value, "unit": (entry or {}).get("unit", ""),
               "threshold": describe_rule(bound or rule), "passed": check_value(value, bound) if bound else True}
        if bound is None:
            row.update(skipped=True, note=why)
        elif entry is None:   # the row's FAIL then says why, in every report and test message
            row["note"] = f"{metric} was not recorded by this run of {notebook}"
        elif why:
            row["note"] = why
        rows.append(row)
    return rows
