"""The offline model zoo: each model loads with the hub switched off and does what it claims."""
import os
import random

import pytest
import torch

from optcourse.models import digits, llm, minilm


def test_offline_environment_is_set():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert ".cache" in os.environ["HF_HOME"]


def test_digits_data_is_64x64_and_fixed():
    x_train, y_train, x_test, y_test = digits.load_digits_data()
    assert x_train.shape[1:] == (1, 64, 64) and x_test.shape[1:] == (1, 64, 64)
    assert len(x_train) + len(x_test) == 1797 and len(x_test) == 450
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    again = digits.load_digits_data()
    assert torch.equal(again[3], y_test), "the split must be the same every time"


def test_shipped_digits_resnet_is_accurate():
    model = digits.load_digits_resnet()
    _, _, x_test, y_test = digits.load_digits_data()
    assert digits.accuracy(model, x_test, y_test) >= 0.97


def test_digits_training_is_deterministic():
    torch.manual_seed(123)  # must not matter: training seeds itself
    a, report = digits.train_digits_resnet(epochs=1, progress=False)
    b, _ = digits.train_digits_resnet(epochs=1, progress=False)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    # one epoch already lowers the loss well below its start (a broken loop would not)
    assert report["last_epoch_loss"] < 0.8 * report["first_loss"]


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="remake them"):
        digits.load_digits_resnet(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="config.json"):
        llm.llm_dir(tmp_path)


def test_minilm_loads_offline_and_embeds_meaningfully():
    tok, model = minilm.load_minilm()
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    emb = minilm.embed(["A cat sits on the mat.", "A kitten is sitting on a rug.",
                        "Quarterly revenue rose by four percent."], tok, model)
    assert emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3


def test_course_llama_loads_and_matches_its_recorded_perplexity():
    tok, model = llm.load_course_llama()
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.num_key_value_heads < cfg.num_attention_heads  # GQA
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == llm.training_report()["parameters"]
    text = llm.heldout_text(max_chars=40_000)
    ppl = llm.perplexity(model, tok, text)
    # the recorded 10.4 is over the whole held-out text; its first 40k characters are harder (~27).
    # A model that learned nothing would be near the vocabulary size (8192).
    assert ppl < 40
    words = text.split()
    random.Random(0).shuffle(words)
    shuffled = " ".join(words)
    assert llm.perplexity(model, tok, shuffled) > 3 * ppl, "word order must matter to a language model"


def test_course_llama_writes_readable_text():
    tok, model = llm.load_course_llama()
    ids = tok("Return the number of", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0], skip_special_tokens=True)
    words = text.split()
    assert len(words) >= 5 and all(w.isascii() for w in words)


def test_shipped_files_are_small():
    size = sum(p.stat().st_size for p in llm.LLM_DIR.iterdir())
    assert size <= 20 * 1024 * 1024


def test_encode_docs_ends_every_document_with_eos():
    tokenizer, _ = llm.load_course_llama()
    from optcourse.models.train_llm import encode_docs

    ids = encode_docs(tokenizer, "first doc\n\nsecond doc", eos_id=tokenizer.eos_token_id)
    first = tokenizer("first doc")["input_ids"]
    assert ids.dtype == torch.long and ids.dim() == 1
    assert ids[: len(first) + 1].tolist() == first + [tokenizer.eos_token_id]
    assert (ids == tokenizer.eos_token_id).sum() == 2 and ids[-1] == tokenizer.eos_token_id


def test_window_loss_is_the_log_of_perplexity_and_keeps_the_mode():
    tokenizer, model = llm.load_course_llama()
    from optcourse.models.train_llm import encode_docs

    ids = encode_docs(tokenizer, llm.heldout_text(4000), tokenizer.eos_token_id)[: 4 * 65]
    windows = ids.view(4, 65)
    loss = llm.window_loss(model, windows)
    # perplexity over the same non-overlapping windows of 64 predicted tokens
    text_ppl = llm.perplexity(model, tokenizer, llm.heldout_text(4000), seq_len=64, max_tokens=4 * 65)
    assert 1.0 < loss < 5.0 and not model.training
    model.train()
    assert llm.window_loss(model, windows) == pytest.approx(loss, rel=1e-5) and model.training
    model.eval()
    assert abs(loss - __import__("math").log(text_ppl)) < 0.3
