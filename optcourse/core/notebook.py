"""The set-up every lecture notebook runs first, in one call instead of a copied cell.

``profile, metrics, out = notebook.setup("03_onnx_runtime", device=device, metrics_path=metrics_path,
output_dir=output_dir)`` keeps the tools offline (``apply_offline_environment``), resolves the hardware
profile, opens the metrics recorder the runner reads, creates the output folder, seeds torch and hides
the UserWarnings that libraries print on import. The library must be importable: ``make setup``
installs it into the environment (``pip install -e .``), the runner and the tests start kernels that
inherit ``PYTHONPATH``.
"""
from __future__ import annotations

import os
import pathlib
import warnings
from typing import NamedTuple

from optcourse.core.hardware import resolve_profile
from optcourse.core.paths import apply_offline_environment
from optcourse.measure.metrics import MetricsRecorder


class NotebookSetup(NamedTuple):
    profile: str              # "cpu" or "cuda"
    metrics: MetricsRecorder  # record(metric, value, unit=...) as the thresholds files name them
    out: pathlib.Path         # where the notebook writes plots and files


def setup(name: str, *, device: str = "auto", metrics_path: str | os.PathLike | None = None,
          output_dir: str | os.PathLike = "outputs", seed: int = 0,
          single_thread_on_cpu: bool = False) -> NotebookSetup:
    """Prepare a notebook run; ``name`` is the notebook's name in the thresholds files.

    ``single_thread_on_cpu``: one intra-op thread on the ``cpu`` profile. On a small shared CPU, several
    OpenMP threads per process oversubscribe the cores and small kernels slow down by orders of
    magnitude; one thread keeps timings stable.
    """
    import torch

    apply_offline_environment()  # no model hub, caches inside the repository
    profile = resolve_profile(device)
    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.manual_seed(seed)
    if single_thread_on_cpu and profile == "cpu":
        torch.set_num_threads(1)
    return NotebookSetup(profile, MetricsRecorder(name, metrics_path, profile), out)
