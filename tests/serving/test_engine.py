"""Engine configurations a student chooses (validated before they reach vLLM's command line) and lab 03's
deployment rules."""

import dataclasses
import json
import os

import pytest
from transformers import AutoConfig

from optcourse.models.llm import LLM_DIR
from optcourse.serving import deployment, engine
from optcourse.serving.engine import ConfigError, EngineConfig


@pytest.mark.parametrize("values, message", [
    ([1, 2], "a dict of knobs"),
    ({"max_num_seqs": 8, "tensor_parallel_size": 2}, "unknown engine knob"),
    ({"max_num_seqs": True}, "max_num_seqs must be an int"),
    ({"max_num_seqs": 0}, "from 1 to"),
    ({"max_num_seqs": None}, "not None"),
    ({"max_num_seqs": "8; rm -rf /"}, "max_num_seqs must be an int"),
    ({"max_num_batched_tokens": 2.5}, "max_num_batched_tokens must be an int"),
    ({"kv_cache_memory_bytes": 10}, "kv_cache_memory_bytes must be an int from"),
    ({"enable_prefix_caching": "yes"}, "True or False"),
    ({"kv_cache_dtype": "fp8 --trust-remote-code"}, "kv_cache_dtype must be one of"),
])
def test_a_configuration_is_refused_with_the_knob_and_the_reason(values, message):
    with pytest.raises(ConfigError, match=message):
        EngineConfig.from_dict(values)


def test_flags_are_the_knobs():
    cfg = EngineConfig.from_dict({"max_num_seqs": 8, "max_num_batched_tokens": 256, "enable_chunked_prefill": False,
                                  "enable_prefix_caching": False, "kv_cache_dtype": "fp8"})
    args = cfg.args(default_kv_bytes=1 << 24)
    assert args[args.index("--max-num-seqs") + 1] == "8"
    assert args[args.index("--max-num-batched-tokens") + 1] == "256"
    assert args[args.index("--kv-cache-memory-bytes") + 1] == str(1 << 24)     # the default when not chosen
    assert args[args.index("--kv-cache-dtype") + 1] == "fp8"
    assert "--no-enable-chunked-prefill" in args and "--no-enable-prefix-caching" in args
    assert "--max-num-batched-tokens" not in EngineConfig().args(1 << 24)
    assert EngineConfig(kv_cache_memory_bytes=1 << 22).args(1 << 24).count(str(1 << 22)) == 1


def test_the_server_of_a_configuration_takes_the_common_flags_then_the_knobs(tmp_path):
    cfg = EngineConfig(max_num_seqs=8, kv_cache_memory_bytes=1 << 22)
    server = engine.server_for(LLM_DIR, cfg, common_args=["--dtype", "bfloat16"], default_kv_bytes=1 << 24,
                               log_path=tmp_path / "s.log")
    assert server.args == ["--dtype", "bfloat16", *cfg.args(1 << 24)] and server.process is None   # not started
    assert server.env.get("VLLM_CPU_KVCACHE_SPACE") == os.environ.get("VLLM_CPU_KVCACHE_SPACE")   # sized by the flag
    assert server.log_path == tmp_path / "s.log"


def test_save_and_load_round_trip_and_load_refuses_what_is_not_a_configuration(tmp_path):
    cfg = engine.save({"max_num_seqs": 12, "kv_cache_memory_bytes": 1 << 23}, tmp_path / "c" / "engine.json")
    assert engine.load((tmp_path / "c" / "engine.json").read_bytes()) == cfg
    assert cfg.key() == EngineConfig(max_num_seqs=12, kv_cache_memory_bytes=1 << 23).key() != EngineConfig().key()
    with pytest.raises(ConfigError, match="not JSON"):
        engine.load(b"\xff\xfe{")
    with pytest.raises(ConfigError, match="over"):
        engine.load(json.dumps({"max_num_seqs": 1, "x": "y" * 5000}).encode())
    with pytest.raises(ConfigError, match="unknown"):
        engine.load(b'{"max_num_seqs": 4, "model": "/etc/passwd"}')


def test_the_deployment_rules():
    model = AutoConfig.from_pretrained(LLM_DIR)
    assert deployment.kv_bytes_per_token(model) == 4096 and deployment.kv_bytes_per_token(model, "fp8") == 2048
    deployment.check(deployment.REFERENCE, model, "cpu")
    # vLLM keeps one block back: 4 blocks of 128 do not hold a 512-token request, 5 do (fp8: half the bytes)
    deployment.check(EngineConfig(kv_cache_memory_bytes=5 * 128 * 4096), model, "cpu")
    deployment.check(EngineConfig(kv_cache_memory_bytes=5 * 128 * 2048, kv_cache_dtype="fp8"), model, "cpu")
    with pytest.raises(ConfigError, match="cannot hold one request"):
        deployment.check(EngineConfig(kv_cache_memory_bytes=4 * 128 * 4096), model, "cpu")
    with pytest.raises(ConfigError, match="over the budget"):
        deployment.check(EngineConfig(kv_cache_memory_bytes=deployment.KV_BUDGETS["cpu"] + 1), model, "cpu")
    with pytest.raises(ConfigError, match="without chunked prefill"):
        deployment.check(EngineConfig(enable_chunked_prefill=False, max_num_batched_tokens=256), model, "cpu")
    deployment.check(EngineConfig(enable_chunked_prefill=False, max_num_batched_tokens=512), model, "cpu")
    for name, slo in deployment.SLOS.items():
        assert slo.kv_budget_bytes == deployment.KV_BUDGETS[name.split("-")[0]] and slo.requests >= 2 * slo.rate_per_s
        # the sweep brackets the objective: a lower rate and one the server cannot keep up with
        for smoke in (True, False):
            rates = deployment.SWEEP_RATES[name][0 if smoke else 1]
            assert rates == sorted(rates) and rates[0] < slo.rate_per_s < rates[-1]


def test_a_cpu_without_avx512_gets_its_own_objective():
    # vLLM's CPU build runs its AVX2 kernels there: the same objective would be out of reach for every configuration
    assert deployment.objective("cpu", has_avx512=True) == "cpu"
    assert deployment.objective("cpu", has_avx512=False) == "cpu-avx2"
    assert deployment.objective("cuda", has_avx512=False) == "cuda"   # a GPU serves the 8B shape on any host CPU
    slow, fast = deployment.SLOS["cpu-avx2"], deployment.SLOS["cpu"]
    assert slow.rate_per_s < fast.rate_per_s and slow.ttft_ms > fast.ttft_ms and slow.tpot_ms > fast.tpot_ms
    assert (slow.max_tokens, slow.kv_budget_bytes) == (fast.max_tokens, fast.kv_budget_bytes)  # same requests, same cache
    assert deployment.slo("cpu") in (slow, fast) and deployment.sweep_rates("cuda", True) == [16, 64, 256]


def test_without_avx512_the_slo_rate_is_a_share_of_the_measured_reference_capacity(monkeypatch):
    # AVX2 machines differ too much in speed for one fixed rate: the rate comes from the machine's own capacity
    monkeypatch.setattr("optcourse.core.hardware.has_avx512", lambda flags=None: False)
    assert deployment.rate_from_capacity("cpu") and not deployment.rate_from_capacity("cuda")
    measured = deployment.slo("cpu", 12.5)
    assert measured.rate_per_s == deployment.RATE_SHARE["cpu-avx2"] * 12.5
    assert dataclasses.replace(measured, rate_per_s=3.0) == deployment.slo("cpu") == deployment.SLOS["cpu-avx2"]
    with pytest.raises(ValueError, match="positive"):
        deployment.slo("cpu", 0.0)
    monkeypatch.setattr("optcourse.core.hardware.has_avx512", lambda flags=None: True)
    assert not deployment.rate_from_capacity("cpu") and deployment.slo("cpu", 12.5) == deployment.SLOS["cpu"]


def test_capacity_is_the_median_closed_loop_rate_of_completed_requests(monkeypatch):
    from types import SimpleNamespace

    calls = []
    rounds = iter([(10, 2.0), (12, 2.0), (9, 1.0)])   # (completed of 12, seconds): 5, 6, 9 requests/s

    def fake_run_load(url, model, prompts, *, max_tokens, concurrency, num_requests, ignore_eos):
        calls.append((concurrency, num_requests, max_tokens))
        if len(calls) == 1:                               # the warm-up is not counted
            return SimpleNamespace(results=[], duration_s=1.0)
        ok, seconds = next(rounds)
        return SimpleNamespace(results=[SimpleNamespace(ok=i < ok) for i in range(12)], duration_s=seconds)

    monkeypatch.setattr(engine.loadgen, "run_load", fake_run_load)
    server = SimpleNamespace(url="http://127.0.0.1:1", served_model_name="m")
    got = engine.capacity("model", EngineConfig(max_num_seqs=16), ["p"], 32, common_args=[], default_kv_bytes=1,
                          requests=12, server=server)
    assert got == 6.0 and calls[1:] == [(12, 12, 32)] * 3, (got, calls)   # clients: max_num_seqs, at most requests


def test_cuda_serves_the_8b_shape_with_random_weights_and_cpu_the_course_llama(tmp_path):
    folder, random_weights = deployment.model("cuda", None, tmp_path)
    config = AutoConfig.from_pretrained(folder)
    assert random_weights and (config.num_hidden_layers, config.num_key_value_heads, config.hidden_size) == (32, 8, 4096)
    assert deployment.kv_bytes_per_token(config) == 131072          # 2 x 32 layers x 8 KV heads x 128 x 2 bytes
    assert (folder / "tokenizer.json").is_file()
    assert "--load-format" in deployment.common_args(True, random_weights)
    assert deployment.model("cpu", None, tmp_path) == (LLM_DIR, False)
    assert "--load-format" not in deployment.common_args(True, False)
    assert "--gpu-memory-utilization" in deployment.common_args(False, True, "cuda")
    assert "--gpu-memory-utilization" not in deployment.common_args(False, False, "cpu")  # on CPU it sizes RAM
    # the budget holds the reference's 32 sequences of the full context with room to spare, on each profile
    for profile in ("cpu", "cuda"):
        model = AutoConfig.from_pretrained(deployment.model(profile, None, tmp_path)[0])
        deployment.check(deployment.REFERENCE, model, profile)
        assert deployment.KV_BUDGETS[profile] >= 32 * deployment.MAX_MODEL_LEN * deployment.kv_bytes_per_token(model)


def test_preemptions_are_the_counter_delta_over_every_label_set():
    """ConfigRun.preemptions: vLLM's counter after minus before, summed over its label sets, and only that series
    (not one whose name merely starts with it, nor another engine metric)."""
    before = {'vllm:num_preemptions_total{engine="0",model_name="m"}': 2.0,
              'vllm:num_preemptions_total{engine="1",model_name="m"}': 1.0,
              'vllm:num_preemptions_total_created{engine="0"}': 1e9, "vllm:num_requests_running": 4.0}
    after = {'vllm:num_preemptions_total{engine="0",model_name="m"}': 7.0,
             'vllm:num_preemptions_total{engine="1",model_name="m"}': 4.0,
             'vllm:num_preemptions_total_created{engine="0"}': 2e9, "vllm:num_requests_running": 0.0}
    run = engine.ConfigRun(EngineConfig(), None, 1.0, 1.0, {}, before, after, 0.0)
    assert run.preemptions() == 8.0
