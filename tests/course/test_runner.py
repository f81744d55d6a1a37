"""The notebook harness: parameters in, metrics out, failures reported with their cell, run goes on."""
import json

import nbformat
import pytest

from optcourse.course import runner


def make_notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('device = "auto"\nsmoke = True\nmetrics_path = None\noutput_dir = "outputs"',
                                       metadata={"tags": ["parameters"]})
    nb.cells = [params] + [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def notebooks(tmp_path):
    good = make_notebook(tmp_path / "good.ipynb",
                         "from optcourse.measure.metrics import MetricsRecorder\n"
                         "from optcourse.core.hardware import resolve_profile\n"
                         "m = MetricsRecorder('good', metrics_path, resolve_profile(device))\n"
                         "m.record_path('TensorRT', False, 'TensorRT engines', 'the CPU provider')\n"
                         "m.record('score', 3.0 if smoke else 5.0, unit='pts')\n"
                         "m.record('error', -2.4e-6, unit='rel')\n"
                         "import pathlib, matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
                         "fig, ax = plt.subplots(); ax.plot([1, 2]); fig.savefig(pathlib.Path(output_dir) / 'curve.png')")
    bad = make_notebook(tmp_path / "bad.ipynb", "x = 1", "raise ValueError('the model file is missing')", "y = 2")
    thresholds = tmp_path / "thresholds"
    thresholds.mkdir()
    (thresholds / "cpu.yaml").write_text("good:\n  score: {min: 2}\n  error: {max: 0.01}\n"
                                         "  speed: {min: 2, requires: tensorrt}\nbad:\n  score: {min: 1}\n")
    return good, bad, thresholds


@pytest.mark.timeout(300)
def test_runner_reports_metrics_failures_and_exit_code(notebooks, tmp_path, capfd):
    good, bad, thresholds = notebooks
    out = tmp_path / "results"
    code = runner.main(["--profile", "cpu", "--notebook", str(bad), "--notebook", str(good), "--include", "labs",
                        "--out", str(out), "--thresholds-dir", str(thresholds), "--cell-timeout", "120"])
    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    rows = {(r["item"], r["metric"]): r for r in summary["rows"]}
    assert rows[("bad", "executes")]["passed"] is False
    assert "In [4]" in rows[("bad", "executes")]["note"] and "the model file is missing" in rows[("bad", "executes")]["note"]
    assert rows[("bad", "score")]["passed"] is False  # never reported: silence does not pass
    # the good notebook still ran after the bad one, with smoke parameters injected
    assert rows[("good", "executes")]["passed"] is True
    assert rows[("good", "score")]["measured"] == 3.0 and rows[("good", "score")]["passed"] is True
    printed, errors = capfd.readouterr()           # the kernels' own output too (file descriptors, not sys.stdout)
    assert "| good" in printed and "FAIL" in printed
    assert "without encryption" not in errors + printed   # the kernels talk over Unix sockets (ipc_kernel_manager)
    report = (out / "report.md").read_text()
    assert "the model file is missing" in report and "smoke (CI-sized) parameters" in report
    assert "| good | TensorRT is not installed here; using the CPU provider |" in report   # the path each notebook took
    assert "| good | score | 3 pts | >= 2 | PASS |" in report                # rounded, with its unit
    assert "| good | speed | — | >= 2 | SKIP | not applicable: tensorrt is not installed |" in report
    assert (out / "report_files" / "thresholds.png").exists() and (out / "report_files" / "good-curve.png").exists()
    page = (out / "report.html").read_text()
    assert "<tr class='skip'>" in page and "<tr class='fail'>" in page and "<tr class='pass'>" in page
    assert "href='notebooks/good.html'" in page and (out / "notebooks" / "good.html").exists()
    from optcourse.measure.report import html_embedded_images
    assert html_embedded_images(page) == 2        # the margins plot and the notebook's own plot

    # --keep adds a later job's notebooks to the same report (a long GPU run split over jobs); without it, a fresh report
    args = ["--profile", "cpu", "--notebook", str(good), "--include", "labs", "--out", str(out), "--thresholds-dir", str(thresholds)]
    runner.main(args + ["--keep"])
    assert {r["item"] for r in json.loads((out / "summary.json").read_text())["rows"]} == {"good", "bad"}
    assert runner.main(args) == 0
    assert {r["item"] for r in json.loads((out / "summary.json").read_text())["rows"]} == {"good"}


def test_runner_rejects_unknown_profile_and_missing_notebook(tmp_path, capsys):
    assert runner.main(["--profile", "tpu", "--out", str(tmp_path)]) == 2
    assert "unknown hardware profile" in capsys.readouterr().err
    assert runner.main(["--profile", "cpu", "--notebook", str(tmp_path / "nope.ipynb"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    assert runner.main(["--profile", "cpu", "--include", "slides", "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize("measured, threshold, passed, want", [
    (3.0, ">= 2", True, 1.5), (1.0, ">= 2", False, 0.5), (0.5, "<= 1", True, 2.0),
    (-2.4e-6, "<= 0.01", True, 10.0),      # a tiny negative error under a maximum: at the edge, not -4000
    (1e-9, "<= 0.01", True, 10.0), (0.0, ">= 0.5", False, 0.1), (5.0, ">= 0", True, 10.0)])
def test_margin_is_bounded_for_tiny_zero_and_negative_values(measured, threshold, passed, want):
    row = {"item": "n", "metric": "m", "measured": measured, "threshold": threshold, "passed": passed}
    assert runner.margin(row) == pytest.approx(want)
    assert runner.margin({**row, "skipped": True}) is None


def test_format_table_shows_pass_and_fail():
    table = runner.format_table([{"item": "a", "metric": "m", "measured": 1.23456, "threshold": ">= 1", "passed": True},
                                 {"item": "b", "metric": "m", "measured": None, "threshold": ">= 1", "passed": False}])
    assert "1.235" in table and "PASS" in table and "FAIL" in table and "—" in table


@pytest.mark.parametrize("full, expect", [("", ""), ("0", ""), ("1", "--full"), ("maybe", "FULL must be 1")])
def test_make_run_takes_full_as_1_or_0_and_refuses_anything_else(repo_root, full, expect):
    import subprocess

    proc = subprocess.run(["make", "-n", "run", f"FULL={full}"], cwd=repo_root, capture_output=True, text=True,
                          timeout=60)
    runner = [line for line in proc.stdout.splitlines() if "optcourse.course.runner" in line]
    if expect.startswith("FULL must"):
        assert proc.returncode != 0 and expect in proc.stderr and not runner
    else:
        assert proc.returncode == 0 and len(runner) == 1 and ("--full" in runner[0]) == (expect == "--full")


def test_gpu_memory_sampler_keeps_the_peak_and_ignores_failed_samples():
    from optcourse.course.runner import GpuMemorySampler

    values = iter([None, 512.0, 2048.0, RuntimeError("nvidia-smi went away"), 1024.0])

    def query():
        value = next(values, 1024.0)
        if isinstance(value, Exception):
            raise value
        return value

    sampler = GpuMemorySampler(interval=0.001, query=query)
    with sampler:
        import time
        time.sleep(0.05)
    assert sampler.peak_mib == 2048.0
    nothing = GpuMemorySampler(interval=0.001, query=lambda: None)
    with nothing:
        pass
    assert nothing.peak_mib is None


def test_runs_ledger_and_report_carry_the_gpu_memory(tmp_path):
    import json

    from optcourse.course.runner import NotebookRun, merge_runs, write_report

    def run(name, gpu):
        return NotebookRun(name, tmp_path / f"{name}.ipynb", tmp_path / "notebooks" / f"{name}.ipynb",
                           tmp_path / "metrics" / f"{name}.json", tmp_path / "artifacts" / name, 12.0, True, "", gpu)

    merge_runs(tmp_path, [run("a", 1536.0)], keep=False)
    runs = merge_runs(tmp_path, [run("b", None)], keep=True)
    assert [(r.name, r.gpu_memory_mib) for r in runs] == [("a", 1536.0), ("b", None)]
    assert json.loads((tmp_path / "runs.json").read_text())[0]["gpu_memory_mib"] == 1536.0
    # a notebook run again replaces its earlier run in its place (the report's order stays)
    assert [(r.name, r.gpu_memory_mib) for r in merge_runs(tmp_path, [run("a", 2048.0)], keep=True)] == \
        [("a", 2048.0), ("b", None)]
    assert [r["name"] for r in json.loads((tmp_path / "runs.json").read_text())] == ["a", "b"]
    report = write_report([], runs, tmp_path, "cuda", smoke=False).read_text()
    assert "peak GPU memory in use 1,536 MiB" in report and "## GPU memory" in report


def test_components_text_names_the_notebooks_when_their_kernels_differ():
    from optcourse.course.runner import components_text

    base = {"torch": "2.11.0", "transformers": "5.17.0", "onnxruntime": "1.30.0", "ort_providers": ["CPU"]}
    same = components_text({"a": {**base, "vllm": "0.26.0"}, "b": {**base, "vllm": "0.26.0"}}, base)
    assert same.endswith("vLLM 0.26.0") and "(" not in same.replace("['CPU']", "")
    split = components_text({"a": base, "b": {**base, "vllm": "0.26.0"}, "c": None}, base)
    assert "vLLM not installed (a)" in split and "vLLM 0.26.0 (b)" in split
