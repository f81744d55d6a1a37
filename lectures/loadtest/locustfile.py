"""Open-loop load test of the course's vLLM server with Locust (lecture 07, section 10).

Run it headless, e.g.::

    LOADTEST_URL=http://127.0.0.1:8000 LOADTEST_RATE=4 LOADTEST_REQUESTS=40 LOADTEST_OUT=results.jsonl \
        locust -f lectures/loadtest/locustfile.py --headless --users 1 --spawn-rate 1 --run-time 120s

**Open loop.** Locust's users are closed loops: a user sends a request, waits for the answer, waits
``wait_time`` and sends the next, so when the server slows down the users send less and the test under-reports the
latency real traffic would see (coordinated omission). Here the single user is only a *scheduler*: it draws Poisson
arrivals at ``LOADTEST_RATE`` requests/s and starts every request in its own greenlet at its arrival time, whether or
not earlier requests have answered. The offered load is fixed by the test, not by the server.

Every request streams (``optcourse.serving.loadgen.stream_completion``: the socket is gevent's here, so greenlets run
side by side) and is reported to Locust twice, as ``TTFT`` and ``e2e`` (its statistics, CSV and web UI show
both); one JSON line per request goes to ``LOADTEST_OUT`` so that goodput under an SLO can be computed afterwards
(``loadgen.goodput``). When the last request has answered the scheduler stops the run.

Settings (environment variables): ``LOADTEST_URL``, ``LOADTEST_MODEL`` (served model name, default
``course-llama``), ``LOADTEST_RATE`` (requests/s), ``LOADTEST_REQUESTS``, ``LOADTEST_MAX_TOKENS`` (default 32),
``LOADTEST_PROMPTS`` (a JSON file with a list of prompts; default: held-out text), ``LOADTEST_SEED`` (default 0),
``LOADTEST_OUT`` (JSON lines, default ``loadtest_results.jsonl``).
"""
import dataclasses
import json
import os
import random
import time

import gevent
from locust import User, constant, task

from optcourse.serving.loadgen import stream_completion

URL = os.environ.get("LOADTEST_URL", "http://127.0.0.1:8000")
MODEL = os.environ.get("LOADTEST_MODEL", "course-llama")
RATE = float(os.environ.get("LOADTEST_RATE", "2"))
REQUESTS = int(os.environ.get("LOADTEST_REQUESTS", "20"))
MAX_TOKENS = int(os.environ.get("LOADTEST_MAX_TOKENS", "32"))
SEED = int(os.environ.get("LOADTEST_SEED", "0"))
OUT = os.environ.get("LOADTEST_OUT", "loadtest_results.jsonl")


def _prompts() -> list:
    path = os.environ.get("LOADTEST_PROMPTS")
    if path:
        return json.load(open(path))
    from optcourse.models.llm import heldout_text

    text = heldout_text(40_000)
    return [text[i * 400:i * 400 + 300] for i in range(64)]


class OpenLoopScheduler(User):
    """One scheduler; the requests are greenlets it starts at Poisson arrival times."""
    fixed_count = 1
    wait_time = constant(0)

    def _send(self, index: int, prompt, run_start: float, scheduled_s: float, sink) -> None:
        fire = self.environment.events.request.fire
        result = stream_completion(URL, MODEL, prompt, MAX_TOKENS, index=index, run_start=run_start,
                                   ignore_eos=True)
        error = None if result.ok else RuntimeError(result.error)
        fire(request_type="POST", name="TTFT", response_time=result.ttft_s * 1e3 if result.ok else 0.0, response_length=0,
             exception=error, context={})
        fire(request_type="POST", name="e2e", response_time=result.e2e_s * 1e3 if result.ok else 0.0,
             response_length=result.output_tokens, exception=error, context={})
        row = dataclasses.asdict(result)
        row.pop("text", None)
        row["scheduled_s"] = scheduled_s  # its Poisson arrival time: start_s - scheduled_s is the sender's lag
        sink.write(json.dumps(row) + "\n")
        sink.flush()

    @task
    def schedule(self) -> None:
        prompts, rng = _prompts(), random.Random(SEED)
        arrivals, t = [], 0.0
        for _ in range(REQUESTS):
            t += rng.expovariate(RATE)
            arrivals.append(t)
        greenlets = []
        with open(OUT, "w") as sink:
            start = time.perf_counter()
            for i, at in enumerate(arrivals):
                delay = start + at - time.perf_counter()
                if delay > 0:
                    gevent.sleep(delay)  # the next arrival does not wait for any answer
                greenlets.append(gevent.spawn(self._send, i, prompts[i % len(prompts)], start, at, sink))
            gevent.joinall(greenlets)
        self.environment.runner.quit()
