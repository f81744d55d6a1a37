"""Lab 04 (benchmarking): fast static checks of the lab and its mistakes catalogue.

Grading itself (solution full marks, released notebook 0, each mistake of
autograder/labs/lab04_benchmarking/mistakes.yaml losing exactly its cells) runs through the class autograder in the
lead's contract test (``python -m optcourse.autograde.catalogue lab04_benchmarking``), not here."""
import math
import re
import time

import nbformat
import numpy as np
import pytest

from optcourse.autograde import catalogue
from optcourse.core.paths import REPO_ROOT

LAB = "lab04_benchmarking"
SOLUTION = REPO_ROOT / "solutions" / LAB / f"{LAB}.ipynb"
STUDENT = REPO_ROOT / "labs" / LAB / f"{LAB}.ipynb"
TASKS = {"test_task1_percentile": 2, "test_task2_timer": 3, "test_task3_arrivals": 3, "test_task4_scenarios": 2,
         "test_task5_cost": 2, "test_task6_roofline": 2, "test_task7_report": 3, "test_task8_stats": 3}


@pytest.fixture(scope="module")
def nb():
    return nbformat.read(SOLUTION, as_version=4)


def cells_by_id(nb) -> dict:
    return {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells if c.metadata.get("nbgrader")}


def test_solution_notebook_structure(read_notebook_with_parameters):
    nb, params = read_notebook_with_parameters(SOLUTION)
    assert "smoke = True" in params and "price_per_hour" in params
    code = [c for c in nb.cells if c.cell_type == "code"]
    graded = {c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"]["points"]
              for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")}
    assert graded == TASKS
    # vLLM is never started in smoke mode
    llm_cell = next(c for c in code if "VLLMServer" in c.source)
    assert "if not run_llm:" in llm_cell.source


def test_given_cells_fall_back_on_the_reference_for_earlier_tasks(nb):
    """A blank task must cost only its own points: the given cells that call a student's function go through
    yours_or_reference, and Task 7's test runs build_report on the library's results for Tasks 4 and 5."""
    given = "\n".join(c.source for c in nb.cells if c.cell_type == "code" and not c.metadata.get("nbgrader"))
    for name in ("time_calls", "run_scenarios", "technique_table", "conv_flops_bytes", "bootstrap_speedup_ci", "b_is_faster"):
        assert f"yours_or_reference(\"Task" in given and re.search(rf"yours_or_reference\([^)]*\b{name}\b", given), name
    t7 = cells_by_id(nb)["test_task7_report"].source
    assert "technique_table=scenarios.technique_table" in t7 and "scenario_results=_stand_ins" in t7
    assert "zip(" not in t7  # rows are matched by key, in any order


def test_mistakes_catalogue_applies_once_and_covers_every_task(nb):
    mistakes = catalogue.load(LAB)
    per_task = {gid: 0 for gid in TASKS}
    for m in mistakes:
        catalogue.apply(nb, [m])  # raises when an edit does not occur exactly once in its cell
        assert m.loses and m.loses <= set(TASKS), f"{m.id} loses unknown cells {sorted(m.loses - set(TASKS))}"
        for gid in m.loses:
            per_task[gid] += 1
        assert all(e.cell.startswith("task") for e in m.edits), f"{m.id} must edit solution cells only"
    assert all(n >= 3 for n in per_task.values()), per_task
    ids = {m.id for m in mistakes}
    # the four wrong answers that once kept full marks
    assert {"report_baseline_ort_fp32", "bootstrap_ci_90_not_95", "scenarios_no_warmup", "report_no_method_section",
            "report_no_system_section"} <= ids
    for group in catalogue.combine(mistakes, nb):  # how the contract test batches them
        catalogue.apply(nb, group)


# ---------------------------------------------------------------- test cells run against the library (fast)
def _run_test_cell(nb, gid: str, namespace: dict) -> None:
    exec(compile(cells_by_id(nb)[gid].source, f"<{gid}>", "exec"), namespace)  # hidden-test markers are comments


def _task8_namespace(ci):
    from optcourse.measure import scenarios

    return {"np": np, "scenarios": scenarios, "bootstrap_speedup_ci": ci,
            "b_is_faster": lambda a, b, alpha=0.05: scenarios.mann_whitney(a, b)["p_value"] < alpha}


def test_task8_test_accepts_other_correct_bootstraps(nb):
    from optcourse.measure import scenarios

    def by_loop(a, b, n_boot=2000, confidence=0.95, seed=0):  # other draws from the generator: same distribution
        a, b, rng = np.asarray(a), np.asarray(b), np.random.default_rng(seed)
        ratios = [np.median(rng.choice(a, a.size)) / np.median(rng.choice(b, b.size)) for _ in range(n_boot)]
        lo, hi = np.percentile(ratios, [50 * (1 - confidence), 50 * (1 + confidence)])
        return float(np.median(a) / np.median(b)), float(lo), float(hi)

    _run_test_cell(nb, "test_task8_stats", _task8_namespace(scenarios.bootstrap_speedup_ci))
    _run_test_cell(nb, "test_task8_stats", _task8_namespace(by_loop))


def test_task8_test_rejects_a_90_percent_interval(nb):
    from optcourse.measure import scenarios

    def ninety(a, b, n_boot=2000, confidence=0.95, seed=0):
        return scenarios.bootstrap_speedup_ci(a, b, n_boot=n_boot, confidence=2 * confidence - 1, seed=seed)

    with pytest.raises(AssertionError, match="2.5 % and 97.5 %"):
        _run_test_cell(nb, "test_task8_stats", _task8_namespace(ninety))


def test_task2_test_passes_the_library_timer(nb):
    from optcourse.measure import scenarios

    given = next(c.source for c in nb.cells if c.source.startswith("class FakeDevice"))
    ns = {"np": np, "math": math}
    exec(given, ns)
    ns["time_calls"] = scenarios.time_calls
    _run_test_cell(nb, "test_task2_timer", ns)


def test_task4_test_passes_the_library_and_rejects_no_warmup(nb):
    from optcourse.measure import scenarios

    sizes = {"queries": 20, "offline_repeat": 4, "server_queries": 500}

    def ns(warmup):
        def run_scenarios(name, fn_single, fn_batch, batch_size):
            return scenarios.model_scenarios(name, fn_single, fn_batch, batch_size, queries=sizes["queries"],
                                             offline_repeat=sizes["offline_repeat"], latency_bound_ms=50.0,
                                             server_queries=sizes["server_queries"], warmup=warmup, offline_warmup=warmup)
        return {"np": np, "time": time, "scenarios": scenarios, "sizes": sizes, "latency_bound_ms": 50.0,
                "run_scenarios": run_scenarios}

    _run_test_cell(nb, "test_task4_scenarios", ns(1))
    with pytest.raises(AssertionError, match="warm up first"):
        _run_test_cell(nb, "test_task4_scenarios", ns(0))
