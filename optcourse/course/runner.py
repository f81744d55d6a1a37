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
import html
import json
import os
import pathlib
import sys
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


def execute(path: pathlib.Path, out_dir: pathlib.Path, profile: str, smoke: bool,
            cell_timeout: int, extra_parameters: dict | None = None) -> NotebookRun:
    import papermill

    name = notebook_name(path)
    run = NotebookRun(name, path, out_dir / "notebooks" / path.name, out_dir / "metrics" / f"{name}.json",
                      out_dir / "artifacts" / name)
    for folder in (run.output.parent, run.metrics_path.parent, run.artifacts):
        folder.mkdir(parents=True, exist_ok=True)
    run.metrics_path.unlink(missing_ok=True)
    parameters = {"device": profile, "smoke": smoke, "metrics_path": str(run.metrics_path),
                  "output_dir": str(run.artifacts), **(extra_parameters or {})}
    start = time.time()
    try:
        papermill.execute_notebook(str(path), str(run.output), parameters=parameters, kernel_name="python3",
                                   cwd=str(path.parent), execution_timeout=cell_timeout, progress_bar=False,
                                   log_output=False)
        run.ok = True
    except Exception as err:  # noqa: BLE001 - any failure is reported and the run goes on
        run.error = describe_failure(err)
    run.seconds = time.time() - start
    return run


def merge_runs(out_dir: pathlib.Path, runs: list[NotebookRun], keep: bool) -> list[NotebookRun]:
    """With ``keep``, add this invocation's runs to those recorded in ``out_dir/runs.json`` (a later run of
    the same notebook replaces the earlier one), so that a long run can be split over several jobs."""
    ledger = out_dir / "runs.json"
    earlier = []
    if keep and ledger.exists():
        for r in json.loads(ledger.read_text()):
            # the file locations follow from out_dir (as in execute), so a results folder can be moved
            earlier.append(NotebookRun(r["name"], REPO_ROOT / r["path"], out_dir / "notebooks" / pathlib.Path(r["path"]).name,
                                       out_dir / "metrics" / f"{r['name']}.json", out_dir / "artifacts" / r["name"],
                                       r["seconds"], r["ok"], r["error"]))
    names = {r.name for r in runs}
    merged = [r for r in earlier if r.name not in names] + runs
    ledger.write_text(json.dumps([{"name": r.name, "path": display_path(r.path), "seconds": round(r.seconds, 1),
                                   "ok": r.ok, "error": r.error} for r in merged], indent=2))
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


def format_table(rows: list[dict]) -> str:
    headers = ["item", "metric", "measured", "threshold", "pass"]
    body = []
    for r in rows:
        measured = r["measured"]
        measured = "—" if measured is None else (f"{measured:.4g}" if isinstance(measured, float) else str(measured))
        body.append([r["item"], r["metric"], measured, r["threshold"], verdict(r)])
    widths = [max(len(h), *(len(str(b[i])) for b in body)) if body else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    notes = [f"- {r['item']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(out + ([""] + notes if notes else []))


def plot_margins(rows: list[dict], path: pathlib.Path) -> pathlib.Path | None:
    """One bar per threshold: measured / threshold (for min) or threshold / measured (for max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, margins, colors = [], [], []
    for r in rows:
        if r["metric"] == "executes" or r["measured"] is None or not isinstance(r["measured"], (int, float)):
            continue
        bound = float(r["threshold"].split()[1]) if r["threshold"].startswith((">=", "<=")) else None
        if not bound:
            continue
        margin = r["measured"] / bound if r["threshold"].startswith(">=") else (bound / r["measured"] if r["measured"] else float("inf"))
        labels.append(f"{r['item']}\n{r['metric']}")
        margins.append(min(margin, 10.0))
        colors.append("tab:green" if r["passed"] else "tab:red")
    if not labels:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.2))
    ax.barh(range(len(labels)), margins, color=colors)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("margin over threshold (1 = at the threshold, >1 passes; capped at 10)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(rows: list[dict], runs: list[NotebookRun], out_dir: pathlib.Path, profile: str,
                 smoke: bool) -> pathlib.Path:
    from optcourse.measure.bench import system_info

    # the machine the notebooks measured on, as their kernels recorded it (a report can be rebuilt elsewhere)
    recorded = [read_run(r.metrics_path).get("system") for r in runs]
    system = next((info for info in recorded if info), None) or system_info()
    plot = plot_margins(rows, out_dir / "thresholds.png")
    md = [f"# Course run report — profile `{profile}` ({'smoke' if smoke else 'full'} parameters)", "",
          f"Generated {system['timestamp']} on {system['hostname']} ({system['cpu_count']} CPUs"
          f"{', GPU ' + system['gpu'] if system.get('gpu') else ''}).", "",
          f"Components: {components_line(system)}.", "",
          "## Summary", "", format_table(rows), ""]
    taken = paths_taken(runs)
    if taken:
        md += ["## Paths taken", "", *[f"- {line}" for line in taken], ""]
    if plot:
        md += [f"![margins over thresholds]({plot.name})", ""]
    md += ["## Notebooks", ""]
    for run in runs:
        rel = run.output.relative_to(out_dir)
        if not run.output.exists() and run.output.with_suffix(".html").exists():
            rel = rel.with_suffix(".html")   # a committed record keeps the executed notebook as HTML only
        md.append(f"- `{display_path(run.path)}` → [{rel}]({rel}) — {run.seconds:.1f} s, "
                  f"{'ok' if run.ok else 'FAILED: ' + run.error}")
    md += ["", "## System", "", "```json", json.dumps(system, indent=2), "```", ""]
    report_md = out_dir / "report.md"
    report_md.write_text("\n".join(md))
    table_html = "".join(
        f"<tr class={'pass' if r['passed'] else 'fail'}><td>{html.escape(str(r['item']))}</td>"
        f"<td>{html.escape(str(r['metric']))}</td><td>{html.escape(str(r['measured']))}</td>"
        f"<td>{html.escape(str(r['threshold']))}</td><td>{verdict(r)}</td></tr>"
        for r in rows)
    page = (f"<!doctype html><meta charset=utf-8><title>Course run report ({profile})</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd}"
            ".fail{background:#fdd}.pass{background:#efe}</style>"
            f"<h1>Course run report — profile {html.escape(profile)}</h1>"
            f"<p>Components: {html.escape(components_line(system))}</p>"
            + "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in paths_taken(runs)) + "</ul>"
            "<table><tr><th>item</th><th>metric</th><th>measured</th><th>threshold</th><th>pass</th></tr>"
            f"{table_html}</table>"
            + (f"<p><img src='{plot.name}' alt='margins over thresholds'></p>" if plot else "")
            + f"<h2>System</h2><pre>{html.escape(json.dumps(system, indent=2))}</pre>")
    (out_dir / "report.html").write_text(page)
    (out_dir / "summary.json").write_text(json.dumps({"profile": profile, "smoke": smoke, "rows": rows,
                                                      "paths": paths_taken(runs), "system": system}, indent=2))
    return report_md


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
        run = execute(path, args.out, profile, smoke=not args.full, cell_timeout=args.cell_timeout)
        print(f"    {'ok' if run.ok else 'FAILED: ' + run.error} ({run.seconds:.1f} s)", flush=True)
        runs.append(run)
    runs = merge_runs(args.out, runs, args.keep or args.report_only)
    rows = summarize(runs, profile, quiz_rows(args.out) if "quiz" in groups else [], args.thresholds_dir)
    report = write_report(rows, runs, args.out, profile, smoke=not args.full)
    print()
    print(format_table(rows))
    print(f"\nreport: {report} (and report.html beside it)")
    return 0 if rows and all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
