"""The streaming load generator against a tiny fake OpenAI-compatible SSE server on 127.0.0.1."""

import http.server
import json
import math
import threading
import time

import pytest
import torch

from optcourse.serving import loadgen

TOKENS = 5
DELAY = 0.01


class FakeCompletions(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("model") != "fake" or not body.get("stream"):
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b'{"error": "bad request"}')
            return
        n = int(body["max_tokens"])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        time.sleep(2 * DELAY)                      # "prefill"
        for i in range(n):
            chunk = {"choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(DELAY)
        usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}}
        self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())


@pytest.fixture(scope="module")
def fake_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_one_streamed_request_is_timed_token_by_token(fake_server):
    r = loadgen.stream_completion(fake_server, "fake", "hello", TOKENS)
    assert r.ok, r.error
    assert r.output_tokens == TOKENS and r.prompt_tokens == 3
    assert r.text == "".join(f" t{i}" for i in range(TOKENS))
    assert len(r.itl_s) == TOKENS - 1 and all(g >= 0 for g in r.itl_s)
    assert 0 < r.ttft_s <= r.e2e_s
    assert math.isclose(r.ttft_s + sum(r.itl_s), r.e2e_s, rel_tol=1e-6)
    assert math.isclose(r.tpot_s, (r.e2e_s - r.ttft_s) / (TOKENS - 1))


def test_http_errors_are_reported_not_raised(fake_server):
    r = loadgen.stream_completion(fake_server, "other-model", "hello", 3)
    assert not r.ok and "HTTP 400" in r.error and math.isnan(r.tpot_s)
    dead = loadgen.stream_completion("http://127.0.0.1:9", "fake", "hello", 3, timeout_s=2)
    assert not dead.ok and dead.error


def test_run_load_is_bounded_and_concurrent(fake_server):
    res = loadgen.run_load(fake_server, "fake", ["a", "b", "c"], max_tokens=TOKENS, concurrency=4, num_requests=10)
    assert len(res.results) == 10 and all(r.ok for r in res.results)
    assert [r.index for r in res.results] == list(range(10))
    s = res.summary()
    assert s["completed"] == 10 and s["failed"] == 0 and s["output_tokens"] == 10 * TOKENS
    assert math.isclose(s["output_tokens_per_s"], 10 * TOKENS / res.duration_s)
    assert s["ttft_p50_ms"] <= s["ttft_p99_ms"] and s["e2e_p50_ms"] >= s["ttft_p50_ms"]
    # with 4 in flight, the run is faster than 10 requests one after the other
    sequential = sum(r.e2e_s for r in res.results)
    assert res.duration_s < sequential
    # the time limit stops issuing new requests
    limited = loadgen.run_load(fake_server, "fake", ["a"], max_tokens=TOKENS, concurrency=1, num_requests=1000,
                               time_limit_s=0.2)
    assert 1 <= len(limited.results) < 1000


def test_summary_percentiles_use_the_right_series():
    def fake(i, ttft, gaps, ok=True):
        return loadgen.RequestResult(index=i, ok=ok, ttft_s=ttft, itl_s=list(gaps), e2e_s=ttft + sum(gaps),
                                     output_tokens=len(gaps) + 1)

    results = [fake(0, 0.1, [0.01] * 3), fake(1, 0.3, [0.02]), fake(2, 0.2, [0.05, 0.05]), fake(3, 5.0, [], ok=False)]
    s = loadgen.summarize(results, duration_s=2.0)
    assert s["completed"] == 3 and s["failed"] == 1
    assert math.isclose(s["ttft_p50_ms"], 200.0)
    assert math.isclose(s["itl_p50_ms"], 15.0)          # pooled gaps: .01 .01 .01 .02 .05 .05
    assert math.isclose(s["tpot_p50_ms"], 20.0)         # per request: 10, 20, 50 ms
    assert math.isclose(s["e2e_mean_ms"], (130 + 320 + 300) / 3)
    assert math.isclose(s["output_tokens_per_s"], (4 + 2 + 3) / 2.0)
    empty = loadgen.summarize([], 1.0)
    assert empty["completed"] == 0 and math.isnan(empty["ttft_p50_ms"])
    assert loadgen.percentiles([1.0, 2.0, 3.0, float("nan")])["p50"] == 2.0


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "http://example.com", "https://127.0.0.1:1"])
def test_only_loopback_is_allowed(url):
    with pytest.raises(ValueError):
        loadgen.run_load(url, "fake", ["a"], num_requests=1)


def test_loopback_forms_are_accepted():
    for url in ("http://127.0.0.1:1", "http://localhost:1", "http://[::1]:1"):
        loadgen.check_loopback(url)


def test_run_generate_batch_turns_engine_timestamps_into_the_load_summary():
    """transformers' continuous batching (lab 03's path without vLLM): per-token timestamps -> TTFT/ITL/E2E."""
    import types

    class FakeEngine:  # stands in for a model's generate_batch: fixed timestamps, one failed request
        def generate_batch(self, inputs, generation_config, continuous_batching_config, record_timestamps, progress_bar):
            assert record_timestamps and continuous_batching_config.max_requests_per_batch == 2
            assert generation_config.max_new_tokens == 3
            out = {}
            for i, (start, stamps) in enumerate([(10.0, [10.5, 10.6, 10.8]), (10.2, [11.0, 11.1, 11.3])]):
                out[f"req_{i}"] = types.SimpleNamespace(error=None, lifespan=(start, stamps[-1]), timestamps=stamps,
                                                        generated_tokens=[1, 2, 3])
            out["req_2"] = types.SimpleNamespace(error="out of blocks", lifespan=(-1, -1), timestamps=None,
                                                 generated_tokens=[])
            return out

    res = loadgen.run_generate_batch(FakeEngine(), [[1, 2], [3]], max_tokens=3, concurrency=2, num_requests=3)
    assert [r.ok for r in res.results] == [True, True, False] and res.results[2].error == "out of blocks"
    first, second = res.results[:2]
    assert first.ttft_s == pytest.approx(0.5) and second.ttft_s == pytest.approx(0.8)  # from when each was scheduled
    assert first.itl_s == pytest.approx([0.1, 0.2]) and second.e2e_s == pytest.approx(1.1)
    assert res.duration_s == pytest.approx(1.3)                                     # first scheduled -> last token
    assert res.summary()["output_tokens_per_s"] == pytest.approx(6 / 1.3)
    with pytest.raises(ValueError, match="one max_tokens"):
        loadgen.run_generate_batch(FakeEngine(), [[1, 2]], max_tokens=[3, 4], concurrency=2)
    with pytest.raises(ValueError, match="concurrency"):
        loadgen.run_generate_batch(FakeEngine(), [[1]], concurrency=0)


def test_run_load_takes_one_max_tokens_per_request(fake_server):
    res = loadgen.run_load(fake_server, "fake", ["a", "b"], max_tokens=[2, 7, 4], concurrency=2, num_requests=5)
    assert [r.output_tokens for r in res.results] == [2, 7, 4, 2, 7]
    for bad in ([], [3, 0], -1):
        with pytest.raises(ValueError):
            loadgen.run_load(fake_server, "fake", ["a"], max_tokens=bad, num_requests=1)


class RecordingGenerator(torch.nn.Module):
    """Stands in for a causal LM: records each generate call and returns prompt + the asked-for tokens."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def generate(self, input_ids, attention_mask, max_new_tokens, min_new_tokens, do_sample, pad_token_id):
        self.calls.append((input_ids.tolist(), attention_mask.tolist(), max_new_tokens, min_new_tokens))
        return torch.cat([input_ids, torch.full((input_ids.shape[0], max_new_tokens), 7)], dim=1)


def test_static_batches_run_each_batch_to_its_longest_request():
    model = RecordingGenerator()
    res = loadgen.run_static_batches(model, [[1, 2, 3], [4]], [5, 1, 2], batch_size=2, pad_token_id=0, num_requests=5)
    # requests (prompt, tokens): ([1,2,3],5) ([4],1) | ([1,2,3],2) ([4],5) | ([1,2,3],1)
    assert [c[2] for c in model.calls] == [5, 5, 1] and [c[3] for c in model.calls] == [5, 5, 1]
    ids, mask, _, _ = model.calls[0]
    assert ids == [[1, 2, 3], [0, 0, 4]] and mask == [[1, 1, 1], [0, 0, 1]]   # left padding, masked
    assert model.calls[2][0] == [[1, 2, 3]]
    assert res.batches == 3 and res.useful_tokens == 5 + 1 + 2 + 5 + 1
    assert res.generated_tokens == 2 * 5 + 2 * 5 + 1
    assert res.slot_efficiency == pytest.approx(14 / 21)
    assert res.output_tokens_per_s == pytest.approx(14 / res.duration_s)
    equal = loadgen.run_static_batches(RecordingGenerator(), [[1], [2], [3]], 4, batch_size=2)
    assert equal.slot_efficiency == 1.0 and equal.useful_tokens == 12


def test_static_batches_on_the_course_llama_generate_what_was_asked():
    from optcourse.models import llm

    tok, model = llm.load_course_llama()
    prompts = [tok(t)["input_ids"] for t in ("import os", "def parse(argv):\n    ")]
    res = loadgen.run_static_batches(model, prompts, [3, 6], batch_size=2, pad_token_id=tok.pad_token_id or 0)
    assert (res.useful_tokens, res.generated_tokens, res.batches) == (9, 12, 1)
    with pytest.raises(ValueError):
        loadgen.run_static_batches(model, prompts, 3, batch_size=0)


def test_open_loop_sends_each_request_at_its_arrival_time_whatever_the_server_does(fake_server):
    # each request takes ~70 ms; they are due every 20 ms, so several are in flight at once (a closed loop of
    # one client would start the second only after the first finished)
    arrivals = [0.02 * i for i in range(8)]
    res = loadgen.run_open_loop(fake_server, "fake", ["a", "b"], arrivals, max_tokens=TOKENS)
    assert res.open_loop and res.concurrency is None and res.arrivals_s == arrivals
    assert [r.index for r in res.results] == list(range(8)) and all(r.ok for r in res.results)
    late = [r.start_s - due for r, due in zip(res.results, arrivals)]
    assert all(-1e-3 <= d < 0.03 for d in late), late
    assert res.duration_s >= arrivals[-1] + min(r.e2e_s for r in res.results)
    assert math.isclose(res.offered_rate, 8 / arrivals[-1])
    closed = loadgen.run_load(fake_server, "fake", ["a"], max_tokens=TOKENS, concurrency=1, num_requests=3)
    assert not closed.open_loop and math.isnan(closed.offered_rate)
    assert closed.results[1].start_s >= closed.results[0].e2e_s       # what an open loop never does


@pytest.mark.parametrize("arrivals", [[], [0.2, 0.1], [-0.1, 0.0], [0.0, float("nan")]])
def test_open_loop_refuses_arrivals_that_are_not_a_schedule(fake_server, arrivals):
    with pytest.raises(ValueError):
        loadgen.run_open_loop(fake_server, "fake", ["a"], arrivals, max_tokens=2)


def test_run_sweep_is_one_poisson_load_per_rate(fake_server):
    from optcourse.measure.scenarios import poisson_arrivals

    loads = loadgen.run_sweep(fake_server, "fake", ["a"], [20, 40], 0.25, max_tokens=2, seed=3)
    assert [len(x.results) for x in loads] == [5, 10]
    for rate, load in zip([20, 40], loads):
        assert load.open_loop and load.arrivals_s == poisson_arrivals(rate, len(load.results), 3).tolist()


def test_goodput_counts_the_requests_within_the_slo():
    def fake(ttft, gaps, ok=True):
        return loadgen.RequestResult(index=0, ok=ok, ttft_s=ttft, itl_s=list(gaps), e2e_s=ttft + sum(gaps),
                                     output_tokens=len(gaps) + 1)

    # at the bounds (binary fractions: exact in floating point) a request is within the SLO; one token has no TPOT
    within = [fake(0.1, [0.01] * 4), fake(0.25, [0.015625] * 4), fake(0.15, [])]
    missed = [fake(0.3, [0.01]), fake(0.1, [0.05, 0.01]), fake(0.1, [0.01], ok=False)]
    assert all(loadgen.meets_slo(r, 250, 15.625) for r in within)
    assert not any(loadgen.meets_slo(r, 250, 15.625) for r in missed)
    assert loadgen.goodput(within + missed, 2.0, 250, 15.625) == 1.5
