"""Every lecture executes headlessly (papermill, smoke parameters) and meets the thresholds of this machine's
hardware profile (autograder/thresholds/<profile>.yaml). Lab solutions execute once, in the class autograder,
and their graded runs meet the same thresholds (tests/labs/test_lab_contract.py)."""
import pytest

from optcourse.measure.metrics import read_metrics
from optcourse.measure.thresholds import check_thresholds, load_thresholds
from optcourse.core.paths import REPO_ROOT
from optcourse.course.runner import discover

NOTEBOOKS = discover(["lectures"])


@pytest.mark.notebooks
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[str(p.relative_to(REPO_ROOT)) for p in NOTEBOOKS])
def test_notebook_executes_and_meets_thresholds(path, executed_notebook):
    run = executed_notebook(path)
    assert run.ok, f"{path.name} failed: {run.error} (executed copy: {run.output})"
    measured = read_metrics(run.metrics_path)
    rows = check_thresholds(run.name, measured, load_thresholds(executed_notebook.profile))
    failed = [r for r in rows if not r["passed"]]
    # every metric of the run goes into the message: CI's log is often all there is to explain a miss
    assert not failed, f"thresholds not met: {failed}; all metrics of this run: {measured}"


def test_there_are_seven_lectures_and_four_labs():
    lectures = discover(["lectures"])
    labs = discover(["labs"])
    assert len(lectures) == 7, [p.name for p in lectures]
    assert sorted(p.parent.name for p in labs) == ["lab01_tensorrt_int8", "lab02_quantization",
                                                   "lab03_vllm_deployment", "lab04_benchmarking"]
