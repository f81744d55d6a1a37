"""The course's small Llama ("course-llama"): 8.4 M parameters, GQA, byte-level BPE, bf16 safetensors.

Trained from scratch by ``optcourse.models.train_llm`` on docstrings of the standard library and the
locked scientific packages; transformers and vLLM load the same folder. ``training_report.json`` in
that folder records how it was trained and its held-out perplexity.
"""
from __future__ import annotations

import json
import pathlib

from optcourse.core.paths import ASSETS_DIR

LLM_DIR = ASSETS_DIR / "course-llama"
HELDOUT_TEXT_PATH = ASSETS_DIR / "course-llama-heldout.txt"


def llm_dir(path: str | pathlib.Path | None = None) -> pathlib.Path:
    """The model folder to use: ``path`` when given (a bigger local model), else the shipped one."""
    folder = pathlib.Path(path) if path else LLM_DIR
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no Hugging Face model folder at {folder} (config.json missing)")
    return folder


def load_course_llama(path: str | pathlib.Path | None = None, dtype: str = "float32", device: str = "cpu"):
    """Return ``(tokenizer, model)`` through transformers, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = llm_dir(path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).to(device).eval()
    return tokenizer, model


def heldout_text(max_chars: int | None = None) -> str:
    """Held-out text the model never trained on (for perplexity)."""
    text = HELDOUT_TEXT_PATH.read_text(encoding="utf-8")
    return text[:max_chars] if max_chars else text


def training_report() -> dict:
    return json.loads((LLM_DIR / "training_report.json").read_text())


def perplexity(model, tokenizer, text: str, seq_len: int = 512, max_tokens: int | None = None) -> float:
    """Perplexity of ``model`` on ``text`` over non-overlapping windows (the course's one definition)."""
    from optcourse.models.train_llm import heldout_perplexity

    return heldout_perplexity(model, tokenizer, text, seq_len=seq_len, max_tokens=max_tokens)


def window_loss(model, windows) -> float:
    """Mean next-token cross-entropy of ``model`` on ``windows`` (a ``(n, seq_len + 1)`` tensor of token
    ids: each row predicts its tokens 1.. from 0..), without gradients; the model's train/eval mode is kept."""
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(windows[:, :-1]).logits
    model.train(was_training)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten()).item()
