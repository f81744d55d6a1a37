"""notebook.setup: the one set-up call of the lecture notebooks."""
import json
import os

import torch

from optcourse.core import notebook


def test_setup_returns_profile_recorder_and_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    threads = torch.get_num_threads()
    try:
        profile, metrics, out = notebook.setup("01_optimization_overview", device="cpu",
                                               metrics_path=tmp_path / "m.json", output_dir=tmp_path / "outputs",
                                               single_thread_on_cpu=True)
        assert profile == "cpu" and out.is_dir() and os.environ["HF_HUB_OFFLINE"] == "1"
        assert torch.get_num_threads() == 1
        metrics.record("x", 1.0)
        saved = json.loads((tmp_path / "m.json").read_text())
        assert saved["notebook"] == "01_optimization_overview" and saved["profile"] == "cpu"
        first = torch.rand(1)
        notebook.setup("01_optimization_overview", device="cpu", output_dir=tmp_path / "outputs", seed=0)
        assert torch.equal(torch.rand(1), first)  # seeded
    finally:
        torch.set_num_threads(threads)


def test_lectures_use_setup_and_do_not_walk_sys_path(repo_root):
    import nbformat

    for path in sorted((repo_root / "lectures").glob("*.ipynb")):
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert f'notebook.setup("{path.stem}"' in code, path.name
        assert "sys.path" not in code and "apply_offline_environment" not in code, path.name
