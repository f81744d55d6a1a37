"""A server started from a notebook kernel does not outlive it: the kernel exiting (shut down, restarted) stops it
(atexit), and a kernel killed outright takes it along (the parent-death signal). A stand-in command (a sleeping
Python process) plays vLLM's server: what is tested is VLLMServer's process handling, in seconds."""

import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")

KERNEL = """
import sys, time
from optcourse.serving.server import VLLMServer

class StandIn(VLLMServer):
    def command(self):
        return [sys.executable, "-c", "import time; time.sleep(300)"]

    def healthy(self):
        return True

server = StandIn("unused", kv_cache_space_gib=None).start()
print(server.process.pid, flush=True)
sys.stdin.readline()      # the test says when to exit
"""


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie (a killed process may wait a moment to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return not alive(pid)


def start_kernel() -> tuple[subprocess.Popen, int]:
    kernel = subprocess.Popen([sys.executable, "-c", KERNEL], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    pid = int(kernel.stdout.readline())
    assert alive(pid)
    return kernel, pid


def test_a_kernel_that_exits_stops_its_servers():
    kernel, pid = start_kernel()
    kernel.communicate("\n", timeout=60)
    assert kernel.returncode == 0
    assert gone_within(pid, 5), "the server outlived the process that started it"


def test_a_kernel_killed_outright_takes_its_servers_along():
    kernel, pid = start_kernel()
    kernel.send_signal(signal.SIGKILL)
    kernel.wait(timeout=10)
    try:
        assert gone_within(pid, 5), "the server outlived a SIGKILLed parent (no parent-death signal)"
    finally:
        if alive(pid):
            os.killpg(pid, signal.SIGKILL)
