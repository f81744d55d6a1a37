"""Remake the course's small Llama ("course-llama") from local text.

Three steps, each one command (``python -m optcourse.models.train_llm STEP``):

``corpus``     docstrings of the standard library and of the locked scientific packages (numpy,
               scipy, scikit-learn, pandas, matplotlib, torch, transformers), read with ``ast`` (no imports, so no side
               effects), split by document into train / held-out text.
``tokenizer``  a byte-level BPE tokenizer (Hugging Face ``tokenizers``) trained on the train split.
``train``      a Llama-architecture causal LM trained from scratch (GPU: a few minutes; CPU works
               for a smoke run) with early stopping on held-out loss (the corpus is small: a few
               epochs fit it, more only memorise it), saved in Hugging Face format (safetensors, bf16) with the tokenizer,
               so that transformers and vLLM load the same folder. Writes ``training_report.json``
               with the held-out perplexity.

The shipped model lives in ``optcourse/assets/course-llama``; the held-out text beside it is what
the labs compute perplexity on.
"""
from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import importlib.util
import json
import math
import pathlib
import sys
import sysconfig
import time

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
CORPUS_PACKAGES = ("numpy", "scipy", "sklearn", "pandas", "matplotlib", "torch", "transformers")
SKIP_DIRS = {"test", "tests", "testing", "idlelib", "site-packages", "lib2to3", "turtledemo", "_vendor"}

# The architecture: GQA (2 KV heads for 4 query heads) so that lab 3's KV-cache arithmetic has
# something to show, head_dim 64 (a size every vLLM attention backend supports).
MODEL_CONFIG = dict(
    vocab_size=8192,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)


def _docstrings(root: pathlib.Path):
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 40:
                    yield doc.strip()


def build_corpus(out_dir: pathlib.Path, heldout_every: int = 50) -> dict:
    """Write train.txt.gz and heldout.txt; documents go to held-out by a hash, not by position."""
    roots = [pathlib.Path(sysconfig.get_paths()["stdlib"])]
    for name in CORPUS_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec and spec.submodule_search_locations:
            roots.append(pathlib.Path(list(spec.submodule_search_locations)[0]))
    seen, train, heldout = set(), [], []
    for root in roots:
        for doc in _docstrings(root):
            digest = hashlib.sha1(doc.encode()).digest()
            if digest in seen:
                continue
            seen.add(digest)
            (heldout if digest[0] % heldout_every == 0 else train).append(doc)
    out_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(out_dir / "train.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n\n".join(train))
    (out_dir / "heldout.txt").write_text("\n\n".join(heldout), encoding="utf-8")
    stats = {"train_docs": len(train), "heldout_docs": len(heldout),
             "train_chars": sum(map(len, train)), "heldout_chars": sum(map(len, heldout)),
             "python": sys.version.split()[0]}
    (out_dir / "corpus.json").write_text(json.dumps(stats, indent=2))
    return stats


def train_tokenizer(corpus_dir: pathlib.Path, out_dir: pathlib.Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    with gzip.open(corpus_dir / "train.txt.gz", "rt", encoding="utf-8") as f:
        docs = f.read().split("\n\n")
    tok.train_from_iterator(docs, trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    out_dir.mkdir(parents=True, exist_ok=True)
    _wrap_tokenizer(tok).save_pretrained(out_dir)


def _wrap_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MODEL_CONFIG["max_position_embeddings"],
                                   **SPECIAL_TOKENS)


def encode_docs(tokenizer, text: str, eos_id: int):
    """Token ids of ``text`` as the course tokenizes for training and perplexity: documents split at blank
    lines, each followed by ``eos_id``; a 1-D long tensor."""
    import torch

    ids = []
    for doc in text.split("\n\n"):
        ids.extend(tokenizer(doc)["input_ids"] + [eos_id])
    return torch.tensor(ids, dtype=torch.long)


def heldout_perplexity(model, tokenizer, text: str, seq_len: int = 512, max_tokens: int | None = None) -> float:
    """Perplexity over non-overlapping windows of the held-out text (the labs' definition)."""
    import torch

    ids = encode_docs(tokenizer, text, tokenizer.eos_token_id)
    if max_tokens:
        ids = ids[:max_tokens]
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(ids) - 1, seq_len):
            chunk = ids[start:start + seq_len + 1].to(device)
            if len(chunk) < 2:
                break
            logits = model(chunk[None, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0], chunk[1:], reduction="sum")
            nll += loss.item()
            count += len(chunk) - 1
    return math.exp(nll / count)


def train_model(corpus_dir: pathlib.Path, tokenizer_dir: pathlib.Path, out_dir: pathlib.Path,
                minutes: float, device: str, seq_len: int = 512, batch_size: int = 64,
                lr: float = 3e-3, seed: int = 0) -> dict:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    with gzip.open(corpus_dir / "train.txt.gz", "rt", encoding="utf-8") as f:
        train_ids = encode_docs(tokenizer, f.read(), tokenizer.eos_token_id)
    heldout_text = (corpus_dir / "heldout.txt").read_text(encoding="utf-8")
    config = LlamaConfig(**MODEL_CONFIG, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    use_bf16 = device.startswith("cuda")
    n_windows = (len(train_ids) - 1) // seq_len
    windows = train_ids[: n_windows * seq_len + 1]
    # a fixed slice of held-out text scores checkpoints; the best one is kept (early stopping)
    val_ids = encode_docs(tokenizer, heldout_text, tokenizer.eos_token_id)[: 64 * seq_len + 1]
    val_batch = val_ids[: (len(val_ids) - 1) // seq_len * seq_len + 1]
    val_x = val_batch[:-1].view(-1, seq_len).to(device)
    val_y = val_batch[1:].view(-1, seq_len).to(device)
    best = {"val_loss": float("inf"), "step": 0, "state": None}
    start, step, history = time.time(), 0, []
    budget = minutes * 60
    warmup = 200
    model.train()
    while time.time() - start < budget:
        frac = min(1.0, (time.time() - start) / budget)
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * frac))
        for group in opt.param_groups:
            group["lr"] = lr * max(scale, 0.02)
        idx = torch.randint(0, n_windows, (batch_size,)) * seq_len
        batch = torch.stack([windows[i:i + seq_len + 1] for i in idx.tolist()]).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 250 == 0:
            model.eval()
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                val_loss = torch.nn.functional.cross_entropy(
                    model(val_x).logits.float().flatten(0, 1), val_y.flatten()).item()
            model.train()
            if val_loss < best["val_loss"]:
                best = {"val_loss": val_loss, "step": step,
                        "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
            history.append({"step": step, "seconds": round(time.time() - start, 1), "loss": round(loss.item(), 4),
                            "val_loss": round(val_loss, 4)})
            print(history[-1], flush=True)
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    ppl = heldout_perplexity(model.float(), tokenizer, heldout_text, seq_len=seq_len)
    model = model.to(torch.bfloat16)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    # shards of at most 10 MB: easy to move around, and both transformers and vLLM read shards
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size="10MB")
    tokenizer.save_pretrained(out_dir)
    report = {"parameters": n_params, "best_step": best["step"], "best_val_loss": round(best["val_loss"], 4), "train_tokens": int(len(train_ids)), "steps": step,
              "tokens_seen": step * batch_size * seq_len, "minutes": minutes, "device": device,
              "device_name": torch.cuda.get_device_name() if use_bf16 else "cpu",
              "torch": torch.__version__, "heldout_perplexity_bf16_weights": round(ppl, 3),
              "seq_len": seq_len, "batch_size": batch_size, "lr": lr, "seed": seed, "history": history}
    (out_dir / "training_report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["corpus", "tokenizer", "train"])
    parser.add_argument("--corpus-dir", type=pathlib.Path, default=pathlib.Path("build/llm_corpus"))
    parser.add_argument("--tokenizer-dir", type=pathlib.Path, default=pathlib.Path("build/llm_tokenizer"))
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("build/course-llama"))
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    from optcourse.core.paths import apply_offline_environment

    apply_offline_environment()  # the tokenizer and model libraries must not reach a model hub
    if args.step == "corpus":
        print(build_corpus(args.corpus_dir))
    elif args.step == "tokenizer":
        train_tokenizer(args.corpus_dir, args.tokenizer_dir, MODEL_CONFIG["vocab_size"])
    else:
        print(json.dumps(train_model(args.corpus_dir, args.tokenizer_dir, args.out, args.minutes, args.device,
                                     batch_size=args.batch_size), indent=2))


if __name__ == "__main__":
    main()
