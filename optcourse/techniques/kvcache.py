"""The KV cache, small enough to read: arithmetic, a paged block allocator, and a batching simulator.

Reference implementations for Lab 03 (the hidden tests compare students' versions with these) and
for the lecture on serving:

- **Arithmetic** — a decoder keeps, for every token, one key and one value vector per layer and per
  *KV* head: ``2 * layers * kv_heads * head_dim * bytes_per_element`` bytes per token. With grouped-
  query attention (GQA) ``kv_heads < attention heads`` and the cache shrinks by that ratio.
- **BlockAllocator** — PagedAttention's memory manager: the cache is cut into fixed-size blocks; a
  sequence owns a *block table* (logical block -> physical block). Blocks are reference counted so
  that a fork (parallel sampling, beam search) shares the parent's blocks and copies a block only when
  one of the sharers writes into it (copy-on-write), and full prompt blocks are found again by a hash
  of their tokens and of everything before them (prefix caching, as vLLM's ``--enable-prefix-caching``).
- **simulate_static / simulate_continuous** — static batching (a batch runs until its longest member
  finishes) against iteration-level continuous batching (every step, finished sequences leave and
  waiting ones join, limited by ``max_num_seqs`` and free KV blocks, with preemption by recomputation
  when the blocks run out), on the same request trace, in units of decode steps.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import random
from typing import Sequence

DTYPE_BYTES = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "half": 2, "bfloat16": 2, "bf16": 2,
               "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "float8_e4m3fn": 1, "float8_e5m2": 1, "int8": 1}


# ----------------------------------------------------------------------------------------- arithmetic
def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a KV-cache dtype name (``"bfloat16"``, ``"fp8"``, ...)."""
    key = str(dtype).replace("torch.", "").lower()
    if key not in DTYPE_BYTES:
        raise ValueError(f"unknown KV cache dtype {dtype!r}; known: {', '.join(sorted(DTYPE_BYTES))}")
    return DTYPE_BYTES[key]


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, bytes_per_element: int) -> int:
    """Bytes of KV cache one token occupies: K and V (the 2), in every layer, for every KV head."""
    return 2 * num_layers * num_kv_heads * head_dim * bytes_per_element


def model_kv_shape(config) -> dict:
    """``num_layers``, ``num_kv_heads``, ``num_attention_heads``, ``head_dim`` of a Hugging Face config
    (an object or a dict)."""
    get = (lambda k, d=None: config.get(k, d)) if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    heads = get("num_attention_heads")
    return {"num_layers": get("num_hidden_layers"), "num_attention_heads": heads,
            "num_kv_heads": get("num_key_value_heads") or heads,
            "head_dim": get("head_dim") or get("hidden_size") // heads}


def blocks_needed(num_tokens: int, block_size: int) -> int:
    """Blocks a sequence of ``num_tokens`` tokens occupies (the last block may be partly empty)."""
    return -(-int(num_tokens) // int(block_size))


def tokens_in_budget(budget_bytes: int, bytes_per_token: int, block_size: int = 1) -> int:
    """Tokens a cache of ``budget_bytes`` holds when it is allocated in whole blocks of ``block_size``."""
    num_blocks = int(budget_bytes) // (int(bytes_per_token) * int(block_size))
    return num_blocks * int(block_size)


def num_blocks_in_budget(budget_bytes: int, bytes_per_token: int, block_size: int) -> int:
    return int(budget_bytes) // (int(bytes_per_token) * int(block_size))


# ------------------------------------------------------------------------------------ block allocator
class NoFreeBlocks(RuntimeError):
    """The allocator has no free block left (the scheduler must wait or preempt)."""


def block_hash(parent_hash: int | None, tokens: Sequence[int]) -> int:
    """Hash of a full block: its tokens and the hash of the block before it (so equal hashes mean
    equal *prefixes*, not just equal blocks)."""
    return hash((parent_hash, tuple(int(t) for t in tokens)))


class BlockAllocator:
    """A paged KV-cache allocator with reference counts, copy-on-write and prefix caching.

    - ``allocate(seq_id, token_ids)``: a new sequence with its prompt; returns its block table.
      With ``enable_prefix_caching``, each *full* prompt block whose hash (``block_hash`` of the
      previous block's hash and its tokens) is cached is reused (reference count + 1) instead of
      taking a fresh block. A block that was freed keeps its hash while it sits in the free pool and
      can be revived by a later prompt until it is handed out again (then its hash is forgotten).
    - ``append_token(seq_id, token_id)``: one generated token; takes a fresh block when the last one
      is full; if the last block is partly filled and shared (reference count > 1), copies it first
      (copy-on-write: a fresh block, the copy is recorded in ``copies`` as ``(src, dst)``).
    - ``fork(parent_id, child_id)``: the child shares every block of the parent (reference counts + 1,
      no new block).
    - ``free(seq_id)``: drop the sequence; blocks whose count reaches 0 go back to the free pool.
    ``NoFreeBlocks`` is raised, with the allocator unchanged, when a call needs more blocks than are free.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.free_blocks: collections.OrderedDict[int, None] = collections.OrderedDict.fromkeys(range(num_blocks))
        self.ref_counts = [0] * num_blocks
        self.tables: dict[object, list[int]] = {}
        self.lengths: dict[object, int] = {}
        self.hash_to_block: dict[int, int] = {}
        self.block_to_hash: dict[int, int] = {}
        self.copies: list[tuple[int, int]] = []
        self.prefix_hits = 0      # prompt blocks found in the cache
        self.prefix_queries = 0   # full prompt blocks looked up

    # --- queries
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def block_table(self, seq_id) -> list[int]:
        return list(self.tables[seq_id])

    def refcount(self, block_id: int) -> int:
        return self.ref_counts[block_id]

    def seq_len(self, seq_id) -> int:
        return self.lengths[seq_id]

    def can_allocate(self, num_tokens: int) -> bool:
        return blocks_needed(num_tokens, self.block_size) <= self.num_free_blocks

    # --- internals
    def _take_fresh(self) -> int:
        if not self.free_blocks:
            raise NoFreeBlocks("no free KV-cache block")
        block, _ = self.free_blocks.popitem(last=False)
        old = self.block_to_hash.pop(block, None)   # evict its cached prefix, if any
        if old is not None and self.hash_to_block.get(old) == block:
            del self.hash_to_block[old]
        self.ref_counts[block] = 1
        return block

    def _release(self, block: int) -> None:
        self.ref_counts[block] -= 1
        assert self.ref_counts[block] >= 0, "reference count below zero"
        if self.ref_counts[block] == 0:
            self.free_blocks[block] = None   # most recently freed last: evicted last

    # --- operations
    def allocate(self, seq_id, token_ids: Sequence[int]) -> list[int]:
        if seq_id in self.tables:
            raise KeyError(f"sequence {seq_id!r} already has blocks")
        tokens = list(token_ids)
        n_blocks = max(1, blocks_needed(len(tokens), self.block_size))
        plan: list[tuple[int | None, int | None]] = []   # (cached block or None, hash or None)
        parent = None
        for b in range(n_blocks):
            chunk = tokens[b * self.block_size:(b + 1) * self.block_size]
            h = None
            cached = None
            if self.enable_prefix_caching and len(chunk) == self.block_size:
                h = block_hash(parent, chunk)
                cached = self.hash_to_block.get(h)
                parent = h
            plan.append((cached, h))
        revive = sum(1 for c, _ in plan if c is not None and self.ref_counts[c] == 0)
        fresh = sum(1 for c, _ in plan if c is None)
        if fresh + revive > self.num_free_blocks:
            raise NoFreeBlocks(f"sequence {seq_id!r} needs {fresh + revive} blocks, {self.num_free_blocks} free")
        table = []
        for cached, h in plan:
            if h is not None:
                self.prefix_queries += 1
            if cached is not None:
                self.prefix_hits += 1
                if self.ref_counts[cached] == 0:
                    del self.free_blocks[cached]
                self.ref_counts[cached] += 1
                table.append(cached)
            else:
                block = self._take_fresh()
                if h is not None:
                    self.hash_to_block[h] = block
                    self.block_to_hash[block] = h
                table.append(block)
        self.tables[seq_id] = table
        self.lengths[seq_id] = len(tokens)
        return list(table)

    def append_token(self, seq_id, token_id: int = 0) -> int | None:
        """Returns the block that was newly taken (fresh or copy-on-write), or None."""
        table = self.tables[seq_id]
        length = self.lengths[seq_id]
        new_block = None
        if length == len(table) * self.block_size:          # last block full (or no block): a fresh one
            new_block = self._take_fresh()
            table.append(new_block)
        else:
            last = table[-1]
            if self.ref_counts[last] > 1:                    # shared and about to be written: copy it
                new_block = self._take_fresh()
                self._release(last)
                self.copies.append((last, new_block))
                table[-1] = new_block
        self.lengths[seq_id] = length + 1
        return new_block

    def fork(self, parent_id, child_id) -> list[int]:
        if child_id in self.tables:
            raise KeyError(f"sequence {child_id!r} already has blocks")
        table = self.tables[parent_id]
        for block in table:
            self.ref_counts[block] += 1
        self.tables[child_id] = list(table)
        self.lengths[child_id] = self.lengths[parent_id]
        return list(table)

    def free(self, seq_id) -> None:
        for block in reversed(self.tables.pop(seq_id)):
            self._release(block)
        del self.lengths[seq_id]

    def check_invariants(self) -> None:
        """Every block is either free (count 0) or referenced exactly as often as the tables say."""
        counts = collections.Counter(b for table in self.tables.values() for b in table)
        for block in range(self.num_blocks):
            assert self.ref_counts[block] == counts.get(block, 0), f"block {block}: count {self.ref_counts[block]} != {counts.get(block, 0)}"
            assert (block in self.free_blocks) == (counts.get(block, 0) == 0), f"block {block}: free-pool membership wrong"


# ------------------------------------------------------------------------------ scheduler simulation
@dataclasses.dataclass(frozen=True)
class Request:
    rid: int
    arrival: int          # the step at which it arrives
    prompt_len: int
    output_len: int
    priority: int = 0     # lower is more important; used by simulate_continuous(order="priority")


@dataclasses.dataclass
class SimResult:
    """Outcome of a batching simulation; times are decode steps (one step = one token per running seq)."""

    first_token: dict[int, int]     # rid -> step at which its first output token was produced (kept across preemption)
    finish: dict[int, int]          # rid -> step at which its last output token was produced
    steps: int                      # total steps until the last request finished
    running: list[int]              # number of running sequences in each step
    blocks_used: list[int]          # KV blocks in use in each step
    preemptions: int = 0
    requests: list[Request] = dataclasses.field(default_factory=list)
    step_tokens: list[int] = dataclasses.field(default_factory=list)  # tokens processed at each step 0 .. steps-1

    @property
    def output_tokens(self) -> int:
        return sum(r.output_len for r in self.requests)

    @property
    def throughput(self) -> float:
        """Output tokens per step."""
        return self.output_tokens / self.steps if self.steps else math.nan

    def latencies(self) -> list[int]:
        """End-to-end latency of each request (finish - arrival + 1 steps)."""
        return [self.finish[r.rid] - r.arrival + 1 for r in self.requests]

    def ttfts(self) -> list[int]:
        return [self.first_token[r.rid] - r.arrival + 1 for r in self.requests]


def make_trace(num_requests: int, seed: int = 0, mean_interarrival: float = 1.0,
               prompt_len: tuple[int, int] = (16, 256), output_len: tuple[int, int] = (8, 256)) -> list[Request]:
    """Requests with Poisson arrivals and uniformly random prompt and output lengths (a skewed mix
    of short and long answers is what makes static batching waste steps)."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for rid in range(num_requests):
        out.append(Request(rid, int(t), rng.randint(*prompt_len), rng.randint(*output_len)))
        t += rng.expovariate(1.0 / mean_interarrival) if mean_interarrival > 0 else 0.0
    return out


def simulate_static(trace: Sequence[Request], batch_size: int, block_size: int = 16) -> SimResult:
    """Static batching: take up to ``batch_size`` arrived requests in arrival order, run the batch until
    its longest request is done (finished rows idle, keeping their memory), then take the next batch.
    The prefill and the first token of a batch take its first step."""
    pending = sorted(trace, key=lambda r: (r.arrival, r.rid))
    first, finish, running, blocks, tokens = {}, {}, [], [], []
    step = 0
    i = 0
    while i < len(pending):
        step = max(step, pending[i].arrival)
        batch = [r for r in pending[i:i + batch_size] if r.arrival <= step]
        i += len(batch)
        length = max(r.output_len for r in batch)
        tokens.extend([0] * (step - len(tokens)))  # idle steps before the batch
        for k in range(length):
            running.append(len(batch))
            blocks.append(sum(blocks_needed(r.prompt_len + min(k + 1, length), block_size) for r in batch))
            tokens.append(sum(1 for r in batch if r.output_len > k) + (sum(r.prompt_len for r in batch) if k == 0 else 0))
        for r in batch:
            first[r.rid] = step
            finish[r.rid] = step + r.output_len - 1
        step += length
    return SimResult(first, finish, step, running, blocks, 0, list(trace), tokens)


def simulate_continuous(trace: Sequence[Request], num_blocks: int, block_size: int, max_num_seqs: int,
                        max_steps: int = 1_000_000, *, token_budget: int | None = None,
                        order: str = "fcfs") -> SimResult:
    """Iteration-level (continuous) batching with a paged KV cache of ``num_blocks`` blocks.

    Each step, in this order:
    1. every running sequence (oldest admitted first) needs room for the token it is about to write
       (prompt + tokens generated so far + 1); if no block is free, the most recently admitted running
       sequence is *preempted* (its blocks freed, its progress lost: recomputation) and put back at the
       front of the waiting queue; repeat until the oldest ones fit;
    2. waiting requests that have arrived (``arrival <= step``) are admitted in order (FCFS, never
       skipping the head of the queue) while fewer than ``max_num_seqs`` run and the free blocks hold
       their prompt + 1 token;
    3. every running sequence produces one token (a newly admitted one: its prefill and first token);
       sequences that produced their last token finish and free their blocks. ``first_token`` is recorded
       once, at the first token a request produces: a preempted request that is admitted again keeps it
       (the client already received that token, so it is the request's TTFT).
    A request that cannot fit alone raises ``ValueError``.

    Scheduler options (vLLM has both; the defaults are the plain scheduler above):
    - ``token_budget``: at most that many tokens per step (chunked prefill, as Sarathi-Serve): decodes
      first, one token each, then the rest of the budget prefills waiting prompts in chunks; a prompt
      yields its first token in the step that completes its prefill. Without it a prompt is prefilled
      whole in its admission step.
    - ``order="priority"``: arrived requests are admitted by ``Request.priority`` (lower first), then arrival.
    ``SimResult.step_tokens`` counts the tokens (prefill + decode) of every step, for a time-per-step model.
    """
    if order not in ("fcfs", "priority"):
        raise ValueError("order must be 'fcfs' or 'priority'")
    for r in trace:
        if blocks_needed(r.prompt_len + r.output_len, block_size) > num_blocks:
            raise ValueError(f"request {r.rid} needs more than the {num_blocks} blocks of the cache")
    waiting = collections.deque(sorted(trace, key=lambda r: (r.arrival, r.rid)))
    running: list[list] = []          # [request, tokens generated, blocks held, prompt tokens prefilled]
    first, finish, n_running, n_blocks, step_tokens = {}, {}, [], [], []
    free = num_blocks
    preemptions = 0
    step = 0
    while (waiting or running) and step < max_steps:
        # 1. room for the next token of every running sequence, preempting the newest on shortage
        i = 0
        while i < len(running):
            req, done, held, _ = running[i]
            need = blocks_needed(req.prompt_len + done + 1, block_size) - held
            if need <= free:
                free -= need
                running[i][2] += need
                i += 1
                continue
            victim = running.pop()      # newest; may be this one
            free += victim[2]
            preemptions += 1
            waiting.appendleft(victim[0])
        # 2. admission
        if order == "priority":
            arrived = sorted((r for r in waiting if r.arrival <= step), key=lambda r: (r.priority, r.arrival, r.rid))
            waiting = collections.deque(arrived + [r for r in waiting if r.arrival > step])
        while waiting and waiting[0].arrival <= step and len(running) < max_num_seqs:
            req = waiting[0]
            need = blocks_needed(req.prompt_len + 1, block_size)
            if need > free:
                break
            waiting.popleft()
            free -= need
            running.append([req, 0, need, 0])
        if not running:
            next_step = max(step + 1, waiting[0].arrival) if waiting else step + 1
            step_tokens.extend([0] * (next_step - step))
            step = next_step
            continue
        # 3. one token each (decodes first; then prefills, within the token budget)
        n_running.append(len(running))
        n_blocks.append(num_blocks - free)
        tokens = sum(1 for e in running if e[3] == e[0].prompt_len)  # decodes
        budget = (token_budget if token_budget else math.inf) - tokens
        for entry in running:
            left = entry[0].prompt_len - entry[3]
            if left > 0 and budget > 0:
                chunk = int(min(left, budget))
                entry[3] += chunk
                budget -= chunk
                tokens += chunk
        step_tokens.append(tokens)
        still = []
        for entry in running:
            req = entry[0]
            if entry[3] < req.prompt_len:
                still.append(entry)  # still prefilling: no token yet (the step that completes it yields one)
                continue
            if entry[1] == 0 and req.rid not in first:   # once: a preempted, re-admitted request keeps it
                first[req.rid] = step
            entry[1] += 1
            if entry[1] >= req.output_len:
                finish[req.rid] = step
                free += entry[2]
            else:
                still.append(entry)
        running = still
        step += 1
    return SimResult(first, finish, step, n_running, n_blocks, preemptions, list(trace), step_tokens)


def compare_batching(trace: Sequence[Request], *, batch_size: int, num_blocks: int, block_size: int,
                     max_num_seqs: int, continuous=simulate_continuous) -> dict:
    """Throughput and latency of static vs continuous batching on one trace (a table row each)."""
    import numpy as np

    rows = {}
    for name, res in (("static", simulate_static(trace, batch_size, block_size)),
                      ("continuous", continuous(trace, num_blocks, block_size, max_num_seqs))):
        lat = np.asarray(res.latencies())
        rows[name] = {"steps": res.steps, "tokens_per_step": res.throughput, "latency_p50": float(np.percentile(lat, 50)),
                      "latency_p90": float(np.percentile(lat, 90)), "ttft_p50": float(np.percentile(res.ttfts(), 50)),
                      "preemptions": res.preemptions, "max_running": max(res.running, default=0)}
    return rows
