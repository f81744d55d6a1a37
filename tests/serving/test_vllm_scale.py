"""optcourse.serving.vllm_scale's arithmetic and bookkeeping (CPU, no vLLM, no GPU)."""
import pytest

from optcourse.models import scale
from optcourse.serving import vllm_scale


def test_varied_lengths_are_seeded_and_in_range():
    a = vllm_scale.varied_lengths(128, 16, 512, seed=0)
    assert a == vllm_scale.varied_lengths(128, 16, 512, seed=0)
    assert len(a) == 128 and min(a) >= 16 and max(a) <= 512
    assert max(a) > 300 and min(a) < 40  # spread over the range


def test_static_batches_pad_to_the_longest():
    batches = vllm_scale.static_batches([10, 30, 20, 5, 5], batch=2)
    assert [b["steps"] for b in batches] == [30, 20, 5]
    assert [b["indices"] for b in batches] == [[0, 1], [2, 3], [4]]
    assert sum(b["useful_tokens"] for b in batches) == 70
    assert sum(b["computed_tokens"] for b in batches) == 60 + 40 + 5
    assert vllm_scale.static_useful_fraction([10, 30, 20, 5, 5], 2) == pytest.approx(70 / 105)
    assert vllm_scale.static_useful_fraction([7] * 8, 4) == 1.0


def test_8b_shape_arithmetic():
    config = scale.llama_config("llama-3.1-8b")
    assert vllm_scale.param_count(config) == 8_030_261_248  # Llama-3.1-8B's published count
    assert scale.kv_bytes_per_token(config, 2) == 131_072    # 2 x 32 layers x 8 KV heads x 128 x 2 bytes


def test_kv_capacity_is_whole_blocks_of_what_is_left():
    cap = vllm_scale.kv_capacity(total_bytes=100e9, utilization=0.5, weight_bytes=16e9, kv_bytes_per_token=131_072,
                                 block_size=16)
    assert cap["kv_bytes"] == pytest.approx(34e9)
    assert cap["blocks"] == int(34e9 // (131_072 * 16))
    assert cap["tokens"] == cap["blocks"] * 16
    assert vllm_scale.kv_capacity(10e9, 0.5, 16e9, 131_072)["tokens"] == 0


def test_parse_vllm_log():
    log = ("INFO 12-01 23:10:00 [gpu_worker.py:298] Available KV cache memory: 51.23 GiB\n"
           "INFO 12-01 23:10:00 [kv_cache_utils.py:1087] GPU KV cache size: 419,664 tokens\n")
    assert vllm_scale.parse_vllm_log(log) == {"kv_tokens": 419_664, "kv_gib": 51.23}
    assert vllm_scale.parse_vllm_log("nothing") == {"kv_tokens": None, "kv_gib": None}


def test_skip_reason():
    assert "cuda profile" in vllm_scale.skip_reason("cpu", True)
    assert "not installed" in vllm_scale.skip_reason("cuda", False)
    assert vllm_scale.skip_reason("cuda", True) is None


def test_summarize():
    hf = {"varied_tok_s": 1000.0}
    graphs = {"varied_tok_s": 15000.0, "decode": {"1": 200.0, "256": 20000.0},
              "kv": {"tokens": 950, "arith_tokens": 1000}}
    eager = {"decode": {"1": 100.0, "256": 16000.0}}
    s = vllm_scale.summarize(hf, graphs, eager)
    assert s["vllm_over_hf_static_varied"] == 15.0
    assert s["cuda_graphs_speedup_b1"] == 2.0
    assert s["cuda_graphs_speedup_large"] == 1.25 and s["large_batch"] == 256
    assert s["vllm_kv_tokens_over_arithmetic"] == 0.95


def test_committed_h200_vllm_run_meets_cuda_thresholds(repo_root):
    """Lecture 06's complete run with real vLLM (results/gpu/nvidia-h200, 2026-12-02 05:08 UTC; the partial run of
    01:52, `.vllm-run.json`, is older) passes cuda.yaml's rules for its Section 2a."""
    from optcourse.measure.metrics import read_run
    from optcourse.measure.thresholds import check_thresholds, load_thresholds

    path = repo_root / "results" / "gpu" / "nvidia-h200" / "metrics" / "06_llm_inference_optimization.json"
    run = read_run(path)
    assert run["system"]["vllm"] and run["system"]["gpu"]
    rules = load_thresholds("cuda")["06_llm_inference_optimization"]
    ours = {k: v for k, v in rules.items() if k in vllm_scale.CUDA_METRICS}
    assert set(ours) == set(vllm_scale.CUDA_METRICS) and all(r.get("requires") == "vllm" for r in ours.values())
    rows = [r for r in check_thresholds("06_llm_inference_optimization", run["metrics"], load_thresholds("cuda"),
                                        run["system"]) if r["metric"] in vllm_scale.CUDA_METRICS]
    assert len(rows) == len(vllm_scale.CUDA_METRICS)
    assert all(r["passed"] for r in rows), rows
