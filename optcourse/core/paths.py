"""Where things live, and the offline environment every notebook and server runs in.

All caches (Hugging Face, vLLM, Jupyter, IPython, matplotlib) stay inside the workspace so that a
clone is self-contained and nothing reaches a model hub: ``HF_HUB_OFFLINE=1`` everywhere.
"""
from __future__ import annotations

import os
import pathlib
import sys

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent.parent  # optcourse/ (this file is optcourse/core/paths.py)
REPO_ROOT = PACKAGE_DIR.parent
ASSETS_DIR = PACKAGE_DIR / "assets"
CACHE_DIR = pathlib.Path(os.environ.get("OPTCOURSE_CACHE", REPO_ROOT / ".cache"))
RESULTS_DIR = pathlib.Path(os.environ.get("OPTCOURSE_RESULTS", REPO_ROOT / "results"))
AUTOGRADER_DIR = REPO_ROOT / "autograder"


def offline_environment(cache_dir: pathlib.Path | None = None) -> dict[str, str]:
    """The environment variables that keep every tool offline and its caches in the workspace."""
    cache = pathlib.Path(cache_dir or CACHE_DIR)
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(cache / "huggingface"),
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "JUPYTER_CONFIG_DIR": str(cache / "jupyter" / "config"),
        "JUPYTER_DATA_DIR": str(cache / "jupyter" / "data"),
        "JUPYTER_RUNTIME_DIR": str(cache / "jupyter" / "runtime"),
        "IPYTHONDIR": str(cache / "ipython"),
        "MPLCONFIGDIR": str(cache / "matplotlib"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "torchinductor"),
    }


def apply_offline_environment() -> None:
    """Set the offline variables in this process (values already set by the caller win)."""
    for key, value in offline_environment().items():
        os.environ.setdefault(key, value)
    # tools that nbgrader and papermill start by name (alembic, jupyter) live beside this Python
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
