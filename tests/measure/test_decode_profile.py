"""decode_profile: the profiler sees every decode step's operators, per step, and the shares add up."""
import gzip
import json

import pytest
import torch

from optcourse.measure import decode_profile


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def test_operator_table_counts_each_steps_products_and_cache_appends(tiny_llama):
    steps = 3
    prof = decode_profile.profile_decode(tiny_llama, batch=2, context=16, steps=steps)
    rows, step_ms, outside = decode_profile.operator_table(prof, steps)
    by_name = {r["operator"]: r for r in rows}
    layers = tiny_llama.config.num_hidden_layers
    # per step and layer: q, k, v, o, gate, up, down projections; plus the LM head
    assert by_name["aten::mm"]["calls per step"] == 7 * layers + 1
    # DynamicCache appends K and V of every layer with torch.cat
    assert by_name["aten::cat"]["calls per step"] >= 2 * layers
    assert step_ms > 0 and 0 <= outside <= 100
    total = sum(r["% of step CPU time"] for r in rows)
    assert total + outside == pytest.approx(100, abs=1.0), "self times and the range's own time make up the step"
    gemm = decode_profile.cpu_share(rows, decode_profile.GEMM_OPS)
    assert 0 < gemm < 1
    assert decode_profile.cpu_share(rows, ["no such operator"]) == 0


def test_the_trace_shows_every_step(tiny_llama, tmp_path):
    steps = 2
    prof = decode_profile.profile_decode(tiny_llama, batch=1, context=8, steps=steps)
    path = tmp_path / "trace.json.gz"
    prof.export_chrome_trace(str(path))
    events = json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
    assert sum(e.get("name") == decode_profile.STEP_RANGE for e in events) == steps


def test_operator_table_refuses_a_profile_without_the_step_range():
    from torch.profiler import profile

    with profile() as prof:
        torch.ones(4) + 1
    with pytest.raises(ValueError, match="decode_step"):
        decode_profile.operator_table(prof, 1)
