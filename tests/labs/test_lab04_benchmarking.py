"""Lab 04 (benchmarking): the solution scores full marks, the student version 0, wrong answers lose their task."""
import json
import os

import nbformat
import pytest

from optcourse.paths import REPO_ROOT

LAB = "lab04_benchmarking"
SOLUTION = REPO_ROOT / "solutions" / LAB / f"{LAB}.ipynb"
STUDENT = REPO_ROOT / "labs" / LAB / f"{LAB}.ipynb"
TASKS = {"test_task1_percentile": 2, "test_task2_timer": 3, "test_task3_arrivals": 3, "test_task4_scenarios": 2,
         "test_task5_cost": 2, "test_task6_roofline": 2, "test_task7_report": 3, "test_task8_stats": 3}

# Plausible wrong answers, one per task that should lose its points (solution line -> wrong line).
WRONG = {
    "test_task1_percentile": (  # sorted index int(n*q): off by one against interpolation
        "    pos = (len(xs) - 1) * q / 100\n    lo = math.floor(pos)\n    hi = min(lo + 1, len(xs) - 1)\n"
        "    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)",
        "    return xs[min(int(len(xs) * q / 100), len(xs) - 1)]"),
    "test_task2_timer": (  # no synchronisation inside the timed interval
        "        fn()\n        sync()\n        samples.append((clock() - t0) * 1e3)",
        "        fn()\n        samples.append((clock() - t0) * 1e3)"),
    "test_task3_arrivals": (  # the rate inverted: numpy's scale is the mean gap, not the rate
        "gaps = rng.exponential(scale=1.0 / qps, size=n)", "gaps = rng.exponential(scale=qps, size=n)"),
    "test_task8_stats": (  # a two-sided test answers "different", not "B is faster"
        'mannwhitneyu(a, b, alternative="greater")', 'mannwhitneyu(a, b, alternative="two-sided")'),
}


@pytest.fixture(autouse=True)
def _library_importable(monkeypatch):
    # nbgrader runs the notebook in a temporary course folder: the kernel finds the course library on PYTHONPATH
    paths = [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))


def test_solution_notebook_structure(read_clean_notebook):
    nb, params = read_clean_notebook(SOLUTION)
    assert "smoke = True" in params and "price_per_hour" in params
    code = [c for c in nb.cells if c.cell_type == "code"]
    graded = {c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"]["points"]
              for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")}
    assert graded == TASKS
    for grade_id, (right, _) in WRONG.items():
        assert sum(c.source.count(right) for c in code) == 1, f"wrong-answer anchor for {grade_id} not unique"
    # vLLM is never started in smoke mode
    llm_cell = next(c for c in code if "VLLMServer" in c.source)
    assert "if not run_llm:" in llm_cell.source


def test_student_notebook_has_no_solutions_or_hidden_tests():
    text = STUDENT.read_text()
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
    assert "raise NotImplementedError" in text
    nb = json.loads(text)
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")


@pytest.mark.notebooks
@pytest.mark.timeout(900)
def test_solution_scores_full_marks():
    from optcourse.grading import autograde_notebook

    report = autograde_notebook(LAB, SOLUTION)
    assert report.cells == {k: (float(v), float(v)) for k, v in TASKS.items()}, report.cells


@pytest.mark.notebooks
@pytest.mark.timeout(900)
def test_student_notebook_scores_zero():
    from optcourse.grading import autograde_notebook

    report = autograde_notebook(LAB, STUDENT)
    assert report.max_score == sum(TASKS.values())
    assert report.score == 0, report.cells


@pytest.mark.notebooks
@pytest.mark.timeout(900)
def test_wrong_answers_lose_exactly_their_tasks(tmp_path):
    from optcourse.grading import autograde_notebook

    nb = nbformat.read(SOLUTION, as_version=4)
    for right, wrong in WRONG.values():
        hits = [c for c in nb.cells if c.cell_type == "code" and right in c.source]
        assert len(hits) == 1, right
        hits[0].source = hits[0].source.replace(right, wrong)
    path = tmp_path / f"{LAB}.ipynb"
    nbformat.write(nb, path)
    report = autograde_notebook(LAB, path)
    for grade_id, points in TASKS.items():
        expected = 0.0 if grade_id in WRONG else float(points)
        assert report.cells[grade_id] == (expected, float(points)), (grade_id, report.cells)
