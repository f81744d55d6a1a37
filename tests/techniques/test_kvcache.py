"""KV-cache arithmetic, the paged block allocator's invariants, and the batching simulators."""

import math
import random

import pytest

from optcourse.techniques import kvcache
from optcourse.techniques.kvcache import BlockAllocator, NoFreeBlocks, Request


def test_bytes_per_token_counts_k_and_v_per_kv_head():
    # course-llama: 8 layers, 2 KV heads (4 attention heads), head_dim 64, bf16
    assert kvcache.kv_bytes_per_token(8, 2, 64, 2) == 2 * 8 * 2 * 64 * 2 == 4096
    # Llama-2-7B (MHA, 32 layers, 32 heads of 128, fp16): 512 KiB per token
    assert kvcache.kv_bytes_per_token(32, 32, 128, 2) == 524288
    assert kvcache.dtype_bytes("bfloat16") == 2 and kvcache.dtype_bytes("fp8") == 1
    with pytest.raises(ValueError):
        kvcache.dtype_bytes("int3")


def test_model_kv_shape_reads_a_hf_config():
    from transformers import AutoConfig

    from optcourse.models.llm import LLM_DIR

    shape = kvcache.model_kv_shape(AutoConfig.from_pretrained(LLM_DIR))
    assert shape == {"num_layers": 8, "num_attention_heads": 4, "num_kv_heads": 2, "head_dim": 64}
    assert kvcache.model_kv_shape({"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64})["num_kv_heads"] == 4


def test_blocks_and_budget():
    assert kvcache.blocks_needed(0, 16) == 0
    assert kvcache.blocks_needed(1, 16) == 1
    assert kvcache.blocks_needed(16, 16) == 1
    assert kvcache.blocks_needed(17, 16) == 2
    # whole blocks only: 1 MiB at 4 KiB/token = 256 tokens = 1 block of 256, or 2 of 128, or 1 of 200
    assert kvcache.tokens_in_budget(2**20, 4096) == 256
    assert kvcache.tokens_in_budget(2**20, 4096, block_size=128) == 256
    assert kvcache.tokens_in_budget(2**20, 4096, block_size=200) == 200
    assert kvcache.num_blocks_in_budget(2**30, 4096, 128) == 2048


def test_allocate_append_free_returns_every_block():
    a = BlockAllocator(num_blocks=8, block_size=4)
    assert a.allocate("x", range(6)) == [0, 1]
    assert a.num_free_blocks == 6
    assert a.append_token("x") is None              # 7th token fits in block 1
    assert a.append_token("x") is None              # 8th fills it
    assert a.append_token("x") == 2                 # 9th needs a new block
    assert a.seq_len("x") == 9 and a.block_table("x") == [0, 1, 2]
    a.allocate("y", range(3))
    assert set(a.block_table("y")).isdisjoint(a.block_table("x"))
    a.check_invariants()
    a.free("x")
    a.free("y")
    assert a.num_free_blocks == 8 and all(a.refcount(b) == 0 for b in range(8))
    a.check_invariants()


def test_out_of_blocks_leaves_the_allocator_unchanged():
    a = BlockAllocator(num_blocks=3, block_size=4)
    a.allocate("x", range(8))
    with pytest.raises(NoFreeBlocks):
        a.allocate("y", range(9))
    assert "y" not in a.tables and a.num_free_blocks == 1
    a.allocate("z", range(4))
    with pytest.raises(NoFreeBlocks):
        a.append_token("z")
    a.check_invariants()


def test_fork_shares_blocks_and_copies_on_write():
    a = BlockAllocator(num_blocks=8, block_size=4)
    a.allocate("p", range(6))                        # blocks 0 (full), 1 (2 of 4)
    free_before = a.num_free_blocks
    assert a.fork("p", "c") == a.block_table("p")
    assert a.num_free_blocks == free_before          # sharing, not copying
    assert [a.refcount(b) for b in a.block_table("p")] == [2, 2]
    new = a.append_token("c")                        # writes into the shared partial block: copy it
    assert new is not None and a.copies == [(1, new)]
    assert a.block_table("c") == [0, new] and a.block_table("p") == [0, 1]
    assert a.refcount(0) == 2 and a.refcount(1) == 1 and a.refcount(new) == 1
    assert a.append_token("p") is None               # the parent's block is its own again: no copy
    a.check_invariants()
    a.free("p")
    assert a.refcount(0) == 1 and a.num_free_blocks == 8 - 2
    a.free("c")
    assert a.num_free_blocks == 8
    a.check_invariants()


def test_prefix_caching_reuses_full_blocks_by_hash():
    a = BlockAllocator(num_blocks=10, block_size=4, enable_prefix_caching=True)
    system = list(range(100, 108))                   # two full blocks of shared system prompt
    t1 = a.allocate("u1", system + [1, 2])
    t2 = a.allocate("u2", system + [3])
    assert t1[:2] == t2[:2] and t1[2] != t2[2]
    assert a.refcount(t1[0]) == 2 and a.prefix_hits == 2
    # same second block but a different first block: a different prefix, no reuse
    t3 = a.allocate("u3", [9, 9, 9, 9] + system[4:])
    assert t3[1] != t1[1]
    a.free("u1")
    a.free("u2")
    # freed blocks keep their hash in the free pool and are revived
    t4 = a.allocate("u4", system)
    assert t4 == t1[:2]
    a.check_invariants()
    # without prefix caching, equal prompts get different blocks
    b = BlockAllocator(num_blocks=10, block_size=4)
    assert set(b.allocate("a", system)).isdisjoint(b.allocate("b", system))


def test_prefix_cache_entry_is_forgotten_when_the_block_is_reused():
    a = BlockAllocator(num_blocks=2, block_size=2, enable_prefix_caching=True)
    a.allocate("a", [1, 2])
    a.free("a")
    a.allocate("b", [5, 6, 7, 8])                     # takes both blocks, evicting [1, 2]
    a.free("b")
    before = a.prefix_hits
    a.allocate("c", [1, 2])
    assert a.prefix_hits == before
    a.check_invariants()


def test_random_operations_keep_invariants():
    rng = random.Random(0)
    a = BlockAllocator(num_blocks=32, block_size=4, enable_prefix_caching=True)
    live, next_id = [], 0
    for _ in range(2000):
        op = rng.random()
        try:
            if op < 0.3 or not live:
                a.allocate(next_id, [rng.randrange(3) for _ in range(rng.randint(1, 12))])
                live.append(next_id)
                next_id += 1
            elif op < 0.7:
                a.append_token(rng.choice(live), 0)
            elif op < 0.8:
                a.fork(rng.choice(live), next_id)
                live.append(next_id)
                next_id += 1
            else:
                a.free(live.pop(rng.randrange(len(live))))
        except NoFreeBlocks:
            pass
        a.check_invariants()
    for s in live:
        a.free(s)
    assert a.num_free_blocks == 32


def test_static_batching_waits_for_the_longest():
    trace = [Request(0, 0, 10, 2), Request(1, 0, 10, 5), Request(2, 0, 10, 1)]
    res = kvcache.simulate_static(trace, batch_size=2)
    assert res.finish == {0: 1, 1: 4, 2: 5} and res.first_token[2] == 5 and res.steps == 6


def test_continuous_batching_fills_free_slots_every_step():
    trace = [Request(0, 0, 10, 2), Request(1, 0, 10, 5), Request(2, 0, 10, 1)]
    res = kvcache.simulate_continuous(trace, num_blocks=100, block_size=16, max_num_seqs=2)
    assert res.finish == {0: 1, 1: 4, 2: 2} and res.first_token[2] == 2 and res.preemptions == 0
    assert max(res.running) <= 2


def test_continuous_beats_static_and_preempts_when_memory_is_tight():
    trace = kvcache.make_trace(48, seed=3, mean_interarrival=1.0)
    rows = kvcache.compare_batching(trace, batch_size=8, num_blocks=400, block_size=16, max_num_seqs=8)
    assert rows["continuous"]["tokens_per_step"] > rows["static"]["tokens_per_step"]
    assert rows["continuous"]["latency_p50"] < rows["static"]["latency_p50"]
    assert rows["continuous"]["preemptions"] == 0
    tight = kvcache.simulate_continuous(trace, num_blocks=40, block_size=16, max_num_seqs=16)
    assert tight.preemptions > 0 and max(tight.blocks_used) <= 40
    assert set(tight.finish) == {r.rid for r in trace}
    with pytest.raises(ValueError):
        kvcache.simulate_continuous([Request(0, 0, 100, 100)], num_blocks=4, block_size=16, max_num_seqs=1)


def test_first_token_is_kept_across_preemption():
    """A preempted request's first token already reached the client: re-admission does not move its TTFT."""
    trace = [Request(0, 0, 3, 6), Request(1, 0, 3, 2)]
    res = kvcache.simulate_continuous(trace, num_blocks=3, block_size=4, max_num_seqs=2)
    assert res.preemptions >= 1 and res.first_token == {0: 0, 1: 0}
    assert res.finish[1] > 1   # it restarted after the preemption (progress lost), so it finished later
    tight = kvcache.simulate_continuous(kvcache.make_trace(48, seed=3), num_blocks=40, block_size=16, max_num_seqs=16)
    assert tight.preemptions > 0 and all(tight.first_token[r] <= tight.finish[r] for r in tight.finish)


def test_chunked_prefill_bounds_step_tokens_and_still_finishes():
    trace = [Request(0, 0, 8, 60), Request(1, 3, 2000, 2)]
    plain = kvcache.simulate_continuous(trace, num_blocks=1000, block_size=16, max_num_seqs=4)
    chunked = kvcache.simulate_continuous(trace, num_blocks=1000, block_size=16, max_num_seqs=4, token_budget=256)
    assert max(plain.step_tokens) == 2000 + 1 and max(chunked.step_tokens) <= 256
    # the long prompt needs ceil(2000 / 255) steps of prefill beside the decoder, then its second token
    assert chunked.first_token[1] == 3 + math.ceil(2000 / 255) - 1 and chunked.finish[1] == chunked.first_token[1] + 1
    assert plain.first_token[1] == 3 and plain.finish == {0: 59, 1: 4}
    assert len(plain.step_tokens) == plain.steps and len(chunked.step_tokens) == chunked.steps
    assert sum(chunked.step_tokens) == sum(plain.step_tokens) == 8 + 2000 + 59 + 1  # prompts + decodes after the first


def test_priority_order_admits_important_requests_first():
    trace = [Request(0, 0, 4, 30)] + [Request(i, 1, 4, 10, priority=1 if i < 4 else 0) for i in range(1, 7)]
    res = kvcache.simulate_continuous(trace, num_blocks=1000, block_size=16, max_num_seqs=2, order="priority")
    assert max(res.first_token[i] for i in (4, 5, 6)) < min(res.first_token[i] for i in (1, 2, 3))
    fcfs = kvcache.simulate_continuous(trace, num_blocks=1000, block_size=16, max_num_seqs=2)
    assert min(fcfs.first_token[i] for i in (4, 5, 6)) > max(fcfs.first_token[i] for i in (1, 2, 3))
    with pytest.raises(ValueError):
        kvcache.simulate_continuous(trace, num_blocks=1000, block_size=16, max_num_seqs=2, order="shortest")


def test_static_step_tokens_count_prompts_once_and_only_rows_still_generating():
    res = kvcache.simulate_static([Request(0, 2, 5, 3), Request(1, 2, 7, 1)], batch_size=2)
    assert res.step_tokens == [0, 0, 5 + 7 + 2, 1, 1]
