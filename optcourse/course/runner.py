"""Execute the course's notebooks headlessly with papermill and report against thresholds.

``python -m optcourse.course.runner`` (what ``make run`` calls) executes every lab's solution notebook (and,
with ``--include lectures``, every lecture) on one hardware profile, reads the metrics each notebook
recorded (see ``optcourse.measure.metrics``), checks them against ``autograder/thresholds/<profile>.yaml``,
prints a summary table and writes ``report.md`` / ``report.html`` with a plot under the results
folder. A notebook that fails is reported with its cell and error, and the run goes on to the next
one; the exit status is non-zero if anything failed.

Parameters every notebook accepts (its ``parameters`` cell): ``device`` (auto/cpu/cuda), ``smoke``
(True: CI-sized work; False: full sizes), ``metrics_path``, ``output_dir``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from optcourse.core.hardware import capabilities, resolve_profile
from optcourse.measure.metrics import read_run
from optcourse.measure.thresholds import check_thresholds, load_thresholds
from optcourse.core.paths import REPO_ROOT, RESULTS_DIR, apply_offline_environment

GROUPS = {
    "labs": "solutions/*/*.ipynb",
    "lectures": "lectures/*.ipynb",
}


@dataclasses.dataclass
class NotebookRun:
    name: str
    path: pathlib.Path
    output: pathlib.Path
    metrics_path: pathlib.Path
    artifacts: pathlib.Path
    seconds: float = 0.0
    ok: bool = False
    error: str = ""
    gpu_memory_mib: float | None = None   # peak GPU memory in use while it ran (GpuMemorySampler); None: not sampled


def nvidia_smi_memory_used() -> float | None:
    """MiB in use on the GPUs now, as ``nvidia-smi`` reports it (every process: a vLLM server the notebook started
    counts too), summed over the GPUs it lists; None when it cannot tell."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
        values = [float(v) for v in out.stdout.split()] if out.returncode == 0 else []
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return sum(values) if values else None


class GpuMemorySampler:
    """The peak GPU memory in use while a notebook runs: ``query()`` (default ``nvidia_smi_memory_used``) every
    ``interval`` seconds in a thread, from entering to leaving; ``peak_mib`` stays None when no sample succeeded.
    A peak shorter than the interval can be missed; a kernel's own allocator peak is
    ``torch.cuda.max_memory_allocated``, which does not see the vLLM servers a notebook starts."""

    def __init__(self, interval: float = 0.5, query=None):
        self.interval = interval
        self.query = query or nvidia_smi_memory_used
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        try:
            used = self.query()
        except Exception:  # noqa: BLE001 - a failed sample is no sample
            used = None
        if used is not None:
            self.peak_mib = used if self.peak_mib is None else max(self.peak_mib, used)

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                break

    def __enter__(self) -> "GpuMemorySampler":
        self._thread = threading.Thread(target=self._loop, name="gpu-memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.sample()   # and once at the end


def discover(groups: list[str], only: str | None = None, root: pathlib.Path = REPO_ROOT) -> list[pathlib.Path]:
    paths = []
    for group in groups:
        if group not in GROUPS:
            raise ValueError(f"unknown notebook group {group!r}; choose from {sorted(GROUPS)}")
        paths.extend(sorted(root.glob(GROUPS[group])))
    if only:
        paths = [p for p in paths if only in str(p.relative_to(root))]
    return [p for p in paths if ".ipynb_checkpoints" not in p.parts]


def display_path(path: pathlib.Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def notebook_name(path: pathlib.Path) -> str:
    return path.stem


def describe_failure(err: Exception) -> str:
    """Papermill's error names the cell; keep that and the exception's last line."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        return f"cell In [{err.exec_count}] of the executed notebook raised {err.ename}: {err.evalue}"[:500]
    return f"{type(err).__name__}: {err}"[:500]


def ipc_kernel_manager(folder: str):
    """A kernel manager whose kernel talks over Unix sockets in ``folder`` instead of TCP on 127.0.0.1: nothing to
    eavesdrop, and the kernel's "running over TCP without encryption" warning (printed once per notebook) is gone."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", str(pathlib.Path(folder) / "kernel"))
            super().__init__(**kwargs)

    return IPCKernelManager


def execute(path: pathlib.Path, out_dir: pathlib.Path, profile: str, smoke: bool,
            cell_timeout: int, extra_parameters: dict | None = None, progress: bool = False) -> NotebookRun:
    """Run one notebook with papermill; ``progress``: papermill's bar, a step per cell (the CLI shows it: lab 03's
    vLLM cells take minutes, and a silent terminal looks hung)."""
    import papermill

    name = notebook_name(path)
    run = NotebookRun(name, path, out_dir / "notebooks" / path.name, out_dir / "metrics" / f"{name}.json",
                      out_dir / "artifacts" / name)
    for folder in (run.output.parent, run.metrics_path.parent, run.artifacts):
        folder.mkdir(parents=True, exist_ok=True)
    run.metrics_path.unlink(missing_ok=True)
    parameters = {"device": profile, "smoke": smoke, "metrics_path": str(run.metrics_path),
                  "output_dir": str(run.artifacts), **(extra_parameters or {})}
    # on the cuda profile, the GPU memory in use is sampled while the notebook runs (the report's column)
    sampler = GpuMemorySampler() if profile == "cuda" and shutil.which("nvidia-smi") else None
    start = time.time()
    try:
        with tempfile.TemporaryDirectory(prefix="optcourse-kernel-") as sockets, (sampler or _NoSampler()):
            papermill.execute_notebook(str(path), str(run.output), parameters=parameters, kernel_name="python3",
                                       cwd=str(path.parent), execution_timeout=cell_timeout, progress_bar=progress,
                                       log_output=False, kernel_manager_class=ipc_kernel_manager(sockets))
        run.ok = True
    except Exception as err:  # noqa: BLE001 - any failure is reported and the run goes on
        run.error = describe_failure(err)
    run.seconds = time.time() - start
    run.gpu_memory_mib = sampler.peak_mib if sampler else None
    return run


class _NoSampler:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def merge_runs(out_dir: pathlib.Path, runs: list[NotebookRun], keep: bool) -> list[NotebookRun]:
    """With ``keep``, add this invocation's runs to those recorded in ``out_dir/runs.json`` (a later run of
    the same notebook replaces the earlier one in its place, so the report keeps its order), so that a long run can be
    split over several jobs."""
    ledger = out_dir / "runs.json"
    earlier = []
    if keep and ledger.exists():
        for r in json.loads(ledger.read_text()):
            # the file locations follow from out_dir (as in execute), so a results folder can be moved
            earlier.append(NotebookRun(r["name"], REPO_ROOT / r["path"], out_dir / "notebooks" / pathlib.Path(r["path"]).name,
                                       out_dir / "metrics" / f"{r['name']}.json", out_dir / "artifacts" / r["name"],
                                       r["seconds"], r["ok"], r["error"], r.get("gpu_memory_mib")))
    now = {r.name: r for r in runs}
    merged = [now.pop(r.name, r) for r in earlier] + list(now.values())
    ledger.write_text(json.dumps([{"name": r.name, "path": display_path(r.path), "seconds": round(r.seconds, 1),
                                   "ok": r.ok, "error": r.error, "gpu_memory_mib": r.gpu_memory_mib} for r in merged],
                                 indent=2))
    return merged


def summarize(runs: list[NotebookRun], profile: str, extra_rows: list[dict] | None = None,
              thresholds_dir: pathlib.Path | None = None) -> list[dict]:
    thresholds = load_thresholds(profile, thresholds_dir) if thresholds_dir else load_thresholds(profile)
    rows = []
    for run in runs:
        rows.append({"item": run.name, "metric": "executes", "measured": round(run.seconds, 1),
                     "threshold": "no error", "passed": run.ok, "note": run.error})
        recorded = read_run(run.metrics_path)
        # conditional thresholds follow what the notebook's own kernel had installed
        rows.extend(check_thresholds(run.name, recorded.get("metrics", {}), thresholds, recorded.get("system")))
    rows.extend(extra_rows or [])
    return rows


def verdict(row: dict) -> str:
    return "SKIP" if row.get("skipped") else ("PASS" if row["passed"] else "FAIL")


def paths_taken(runs: list[NotebookRun]) -> list[str]:
    """The real path each notebook said it took (``MetricsRecorder.record_path``), one line each."""
    lines = []
    for run in runs:
        for line in read_run(run.metrics_path).get("paths", {}).values():
            lines.append(f"{run.name}: {line}")
    return lines


def components_line(system: dict) -> str:
    return (f"torch {system.get('torch')}, transformers {system.get('transformers')}, onnxruntime "
            f"{system.get('onnxruntime')} {system.get('ort_providers')}, TensorRT {system.get('tensorrt') or 'not installed'}, "
            f"vLLM {system.get('vllm') or 'not installed'}")


def components_text(systems: dict[str, dict | None], fallback: dict) -> str:
    """The components the notebooks' kernels saw: one line, or, where they differ (a run split over jobs, a package
    installed between two notebooks), each line with the notebooks that saw it."""
    lines = {name: components_line(system) for name, system in systems.items() if system}
    distinct = list(dict.fromkeys(lines.values()))
    if len(distinct) <= 1:
        return distinct[0] if distinct else components_line(fallback)
    return "; ".join(f"{line} ({', '.join(n for n, other in lines.items() if other == line)})" for line in distinct)


def hardware_line(system: dict) -> str:
    return (f"{system.get('hostname', '?')}: {system.get('cpu_count', '?')} CPUs"
            + (f", GPU {system['gpu']}" if system.get("gpu") else ", no GPU"))


def format_measured(row: dict) -> str:
    """The measured value to 4 significant digits with its unit ("—" when the notebook recorded nothing)."""
    from optcourse.measure.report import format_value

    value = row.get("measured")
    if value is None:
        return "—"
    unit = row.get("unit") or ("s" if row.get("metric") == "executes" else "")
    text = format_value(value) if isinstance(value, (int, float)) else str(value)
    return f"{text} {unit}".strip() if unit != "bool" else text


def format_table(rows: list[dict]) -> str:
    """The summary as a plain-text table for the terminal (the report has the same rows)."""
    headers = ["item", "metric", "measured", "threshold", "pass"]
    body = [[r["item"], r["metric"], format_measured(r), r["threshold"], verdict(r)] for r in rows]
    widths = [max(len(h), *(len(str(b[i])) for b in body)) if body else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    notes = [f"- {r['item']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(out + ([""] + notes if notes else []))


MARGIN_RANGE = (0.1, 10.0)   # the plot's x range; a margin beyond it is drawn at the edge


def margin(row: dict) -> float | None:
    """measured / bound for a minimum, bound / measured for a maximum (1 = at the threshold, > 1 passes), clipped
    to MARGIN_RANGE; where a ratio means nothing (a bound or a value of 0 or below, e.g. an error of -2.4e-6 under a
    maximum) the row sits at the edge its verdict says. None: no bar (skipped, not a number, no numeric bound)."""
    value, rule = row.get("measured"), str(row.get("threshold", ""))
    if row.get("skipped") or row.get("metric") == "executes" or isinstance(value, bool) \
            or not isinstance(value, (int, float)) or not rule.startswith((">=", "<=")):
        return None
    try:
        bound = float(rule.split()[1])
    except (IndexError, ValueError):
        return None
    lo, hi = MARGIN_RANGE
    if bound > 0 and value > 0:
        ratio = value / bound if rule.startswith(">=") else bound / value
    else:
        ratio = hi if row["passed"] else lo
    return min(max(ratio, lo), hi)


def plot_margins(rows: list[dict]):
    """One bar per numeric threshold on a log axis from 0.1 to 10, labelled with the measured value and the rule;
    returns a matplotlib figure, or None when no row has a margin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(r, m) for r in rows if (m := margin(r)) is not None]
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.24 * len(bars) + 1.0))
    ax.barh(range(len(bars)), [m for _, m in bars], color=["tab:green" if r["passed"] else "tab:red" for r, _ in bars])
    ax.set_xscale("log")
    ax.set_xlim(*MARGIN_RANGE)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(bars)), [f"{r['item']} · {r['metric']}" for r, _ in bars], fontsize=6.5)
    for y, (r, m) in enumerate(bars):
        ax.text(MARGIN_RANGE[0] * 1.05, y, f"{format_measured(r)} ({r['threshold']})", va="center", fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("margin over the threshold, log scale (1 = at the threshold, > 1 passes; clipped to 0.1-10)")
    fig.tight_layout()
    return fig


def executed_html(run: NotebookRun) -> pathlib.Path | None:
    """The executed notebook as HTML beside it (what the report links), converted again only when the notebook is
    newer than it; None when it cannot be made."""
    target = run.output.with_suffix(".html")
    if run.output.exists() and (not target.exists() or target.stat().st_mtime < run.output.stat().st_mtime):
        try:
            import nbconvert
            import nbformat

            body, _ = nbconvert.HTMLExporter().from_notebook_node(nbformat.read(run.output, as_version=4))
            target.write_text(body, encoding="utf-8")
        except Exception as err:  # noqa: BLE001 - the report links the .ipynb instead
            print(f"    (no HTML copy of {run.output.name}: {type(err).__name__}: {err})", file=sys.stderr)
    return target if target.exists() else None


def write_report(rows: list[dict], runs: list[NotebookRun], out_dir: pathlib.Path, profile: str,
                 smoke: bool) -> pathlib.Path:
    """``report.md`` (PNGs in ``report_files/``), a self-contained ``report.html`` and ``summary.json`` in ``out_dir``,
    through ``optcourse.measure.report.Report``: the threshold table (values rounded, with units; SKIP rows grey with
    their reason), the margins plot, links to each executed notebook and the plots each notebook saved."""
    from optcourse.measure.bench import system_info
    from optcourse.measure.report import Report

    # the machine the notebooks measured on, as their kernels recorded it (a report can be rebuilt elsewhere)
    recorded = [read_run(r.metrics_path).get("system") for r in runs]
    system = next((info for info in recorded if info), None) or system_info()
    size = "smoke (CI-sized) parameters" if smoke else "full-size parameters"
    rep = Report(f"Course run report — profile {profile}, {size}",
                 f"{hardware_line(system)}; generated {system.get('timestamp', '?')}")
    rep.add_text(f"Components: {components_text({r.name: info for r, info in zip(runs, recorded)}, system)}.")
    passed = sum(r["passed"] and not r.get("skipped") for r in rows)
    skipped = sum(bool(r.get("skipped")) for r in rows)
    rep.add_heading("Summary")
    rep.add_text(f"{passed} passed, {len(rows) - passed - skipped} failed, {skipped} skipped (the reason is in "
                 f"the row) of {len(rows)} checks.")
    rep.add_table("thresholds", [{"notebook": r["item"], "metric": r["metric"], "measured": format_measured(r),
                                  "threshold": r["threshold"], "result": verdict(r), "note": r.get("note") or ""}
                                 for r in rows],
                  row_classes=[verdict(r).lower() for r in rows])
    taken = paths_taken(runs)
    if taken:
        rep.add_heading("Paths taken")
        rep.add_table("paths", [{"notebook": run.name, "path": line} for run in runs
                                for line in read_run(run.metrics_path).get("paths", {}).values()])
    fig = plot_margins(rows)
    if fig is not None:
        import matplotlib.pyplot as plt

        rep.add_figure("thresholds", fig, "margin of every numeric threshold")
        plt.close(fig)
    rep.add_heading("Notebooks")
    links = []
    for run in runs:
        page = executed_html(run) or (run.output if run.output.exists() else None)
        href = os.path.relpath(page, out_dir) if page else display_path(run.path)
        gpu = f"peak GPU memory in use {run.gpu_memory_mib:,.0f} MiB, " if run.gpu_memory_mib is not None else ""
        links.append((display_path(run.path), href,
                      f"{run.seconds:.1f} s, {gpu}" + ("ok" if run.ok else "FAILED: " + run.error)))
    rep.add_links(links)
    if any(run.gpu_memory_mib is not None for run in runs):
        rep.add_heading("GPU memory")
        rep.add_text("Peak GPU memory in use while each notebook ran: nvidia-smi's memory.used (every process on the "
                     "GPU, the vLLM servers a notebook starts included), sampled every 0.5 s by the runner.")
        rep.add_table("gpu_memory", [{"notebook": run.name, "peak GPU memory in use (MiB)":
                                      "-" if run.gpu_memory_mib is None else f"{run.gpu_memory_mib:,.0f}",
                                      "seconds": f"{run.seconds:.1f}"} for run in runs])
    for run in runs:   # the plots each notebook saved into its output_dir
        for png in sorted(run.artifacts.glob("*.png")) if run.artifacts.is_dir() else []:
            rep.add_figure(f"{run.name}-{png.stem}".replace(".", "-"), png.read_bytes(), f"{run.name}: {png.name}")
    rep.add_system(system)
    paths = rep.write(out_dir, "report")
    (out_dir / "summary.json").write_text(json.dumps({"profile": profile, "smoke": smoke, "rows": rows,
                                                      "paths": taken, "system": system}, indent=2))
    return paths["md"]


def quiz_rows(out_dir: pathlib.Path) -> list[dict]:
    try:
        from optcourse.quiz import summary
    except ImportError:
        return []
    try:
        return summary(out_dir / "quiz")
    except Exception as err:  # noqa: BLE001 - reported as a failed row
        return [{"item": "quiz", "metric": "summary", "measured": None, "threshold": "no error",
                 "passed": False, "note": describe_failure(err)}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the course's notebooks headlessly and check thresholds.")
    parser.add_argument("--profile", default=os.environ.get("PROFILE", "auto"), help="auto, cpu or cuda")
    parser.add_argument("--full", action="store_true", help="full parameters instead of CI-sized smoke runs")
    parser.add_argument("--include", default="labs,quiz", help="comma list of: labs, lectures, quiz")
    parser.add_argument("--only", default=None, help="run only notebooks whose path contains this text")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS_DIR / "run")
    parser.add_argument("--cell-timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("--notebook", type=pathlib.Path, action="append", default=[],
                        help="run this notebook (repeatable) instead of discovering them")
    parser.add_argument("--keep", action="store_true",
                        help="add to the notebooks already run into --out (split a long run over several jobs)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rebuild the report of the notebooks recorded in --out (e.g. after editing thresholds)")
    parser.add_argument("--thresholds-dir", type=pathlib.Path, default=None,
                        help="folder with <profile>.yaml (default: autograder/thresholds)")
    args = parser.parse_args(argv)
    apply_offline_environment()  # the kernels it starts inherit this process's environment
    try:
        # a report can be rebuilt on any machine; running notebooks needs the profile's hardware
        profile = args.profile if args.report_only and args.profile in ("cpu", "cuda") else resolve_profile(args.profile)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    groups = [g.strip() for g in args.include.split(",") if g.strip()]
    unknown = set(groups) - set(GROUPS) - {"quiz"}
    if unknown:
        print(f"error: unknown --include item(s) {sorted(unknown)}; choose from labs, lectures, quiz", file=sys.stderr)
        return 2
    args.out = args.out.resolve()   # the notebooks run in their own folders: hand them absolute paths
    args.out.mkdir(parents=True, exist_ok=True)
    caps = capabilities()
    print(f"profile {profile}: torch {caps['torch']}, onnxruntime {caps['onnxruntime']} {caps['ort_providers']}, "
          f"TensorRT {caps['tensorrt'] or 'not installed'}, vLLM {caps['vllm'] or 'not installed'}")
    notebooks = [] if args.report_only else (args.notebook or discover([g for g in groups if g in GROUPS], args.only))
    missing = [p for p in notebooks if not p.exists()]
    if missing:
        print(f"error: notebook(s) not found: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    runs = []
    for i, path in enumerate(notebooks, 1):
        print(f"[{i}/{len(notebooks)}] {display_path(path)} ...", flush=True)
        run = execute(path, args.out, profile, smoke=not args.full, cell_timeout=args.cell_timeout, progress=True)
        print(f"    {'ok' if run.ok else 'FAILED: ' + run.error} ({run.seconds:.1f} s)", flush=True)
        runs.append(run)
    runs = merge_runs(args.out, runs, args.keep or args.report_only)
    rows = summarize(runs, profile, quiz_rows(args.out) if "quiz" in groups else [], args.thresholds_dir)
    report = write_report(rows, runs, args.out, profile, smoke=not args.full)
    print()
    print(format_table(rows))
    print(f"\nreport: {report} (and report.html beside it, self-contained)")
    return 0 if rows and all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
