"""ONNX export of the course's models, and numerical verification against PyTorch.

Exporter choice (torch 2.13): ``torch.onnx.export`` defaults to ``dynamo=True`` (torch.export based).
We pass ``dynamo=False`` and use the TorchScript exporter on purpose: on these two models it is several
times faster (digits ResNet ~1 s, MiniLM ~4 s against ~20 s with dynamo on this CPU), it folds
BatchNorm into the convolutions in eval mode, and ``dynamic_axes`` gives named symbolic dimensions that
both ONNX Runtime and TensorRT's ONNX parser read. The dynamo exporter (``dynamic_shapes=...``) works
too; ``export_onnx(..., dynamo=True)`` switches to it.
"""
from __future__ import annotations

import pathlib
import warnings

import numpy as np
import torch

DIGITS_INPUT = "x"
DIGITS_OUTPUT = "logits"
MINILM_INPUTS = ("input_ids", "attention_mask")
MINILM_OUTPUT = "embedding"


def export_onnx(model: torch.nn.Module, example_inputs: tuple, path: str | pathlib.Path, input_names: list[str],
                output_names: list[str], dynamic_axes: dict[str, dict[int, str]] | None = None,
                opset: int = 17, dynamo: bool = False, fold_constants: bool = True) -> pathlib.Path:
    """Export ``model`` (switched to eval mode) to ``path``; returns the path.

    ``fold_constants=False`` (TorchScript exporter only) keeps nodes such as ``BatchNormalization`` that
    constant folding would merge into the convolutions: the graph before any optimizer's fusions.

    ``dynamic_axes`` maps an input/output name to ``{axis: symbolic_name}``; axes not listed are fixed
    to the example's size, so an export without a dynamic batch axis only accepts that batch size.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            shapes = None
            if dynamic_axes:
                dims: dict[str, torch.export.Dim] = {}
                shapes = {name: {ax: dims.setdefault(sym, torch.export.Dim(sym)) for ax, sym in axes.items()}
                          for name, axes in dynamic_axes.items() if name in input_names}
            torch.onnx.export(model, example_inputs, str(path), input_names=input_names, output_names=output_names,
                              opset_version=max(opset, 18), dynamo=True, dynamic_shapes=shapes,
                              external_data=False)
        else:
            torch.onnx.export(model, example_inputs, str(path), input_names=input_names, output_names=output_names,
                              opset_version=opset, dynamo=False, dynamic_axes=dynamic_axes or {},
                              do_constant_folding=fold_constants)
    return path


def export_digits(model: torch.nn.Module, path: str | pathlib.Path, opset: int = 17,
                  fold_batchnorm: bool = True) -> pathlib.Path:
    """The digits ResNet with a dynamic batch axis: input ``x`` (N, 1, 64, 64), output ``logits`` (N, 10).

    ``fold_batchnorm=False`` keeps every ``BatchNormalization`` node, so that an optimizer's fusions can be counted.
    """
    example = torch.zeros(2, 1, 64, 64)
    return export_onnx(model, (example,), path, [DIGITS_INPUT], [DIGITS_OUTPUT],
                       {DIGITS_INPUT: {0: "batch"}, DIGITS_OUTPUT: {0: "batch"}}, opset=opset,
                       fold_constants=fold_batchnorm)


class MiniLMEncoder(torch.nn.Module):
    """MiniLM plus mean pooling and L2 normalisation: token ids and mask in, sentence embedding out."""

    def __init__(self, bert: torch.nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from optcourse.models.minilm import mean_pool

        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        return mean_pool(hidden, attention_mask)


def minilm_feeds(tokenizer, texts: list[str], max_length: int = 128, pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Tokenize ``texts`` into the int64 arrays the exported encoder takes (padding to the longest, or
    to ``pad_to`` tokens for a static shape)."""
    enc = tokenizer(texts, padding="max_length" if pad_to else True, truncation=True,
                    max_length=pad_to or max_length, return_tensors="np")
    return {name: enc[name].astype(np.int64) for name in MINILM_INPUTS}


def export_minilm(path: str | pathlib.Path, tokenizer=None, model=None, opset: int = 17,
                  dynamic: bool = True) -> pathlib.Path:
    """Export MiniLM (with pooling) with dynamic batch and sequence axes (or static shapes)."""
    from optcourse.models.minilm import load_minilm

    if tokenizer is None or model is None:
        tokenizer, model = load_minilm()
    feeds = minilm_feeds(tokenizer, ["an example sentence", "and a second, somewhat longer one"])
    example = tuple(torch.from_numpy(feeds[name]) for name in MINILM_INPUTS)
    axes = None
    if dynamic:
        axes = {name: {0: "batch", 1: "sequence"} for name in MINILM_INPUTS}
        axes[MINILM_OUTPUT] = {0: "batch"}
    return export_onnx(MiniLMEncoder(model), example, path, list(MINILM_INPUTS), [MINILM_OUTPUT], axes, opset=opset)


class _HiddenStates(torch.nn.Module):
    def __init__(self, bert: torch.nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state


def export_minilm_hidden_states(path: str | pathlib.Path, tokenizer, model, seq_len: int = 32,
                                opset: int = 17) -> pathlib.Path:
    """MiniLM without pooling, the graph a transformer optimizer sees: inputs ``input_ids``,
    ``attention_mask``, ``token_type_ids``, output ``last_hidden_state``, dynamic batch and sequence axes."""
    enc = tokenizer(["an example sentence"] * 2, padding="max_length", max_length=seq_len, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "seq"} for n in names + ["last_hidden_state"]}
    return export_onnx(_HiddenStates(model), tuple(enc[n] for n in names), path, names, ["last_hidden_state"], axes,
                       opset=opset)


def input_shapes(path: str | pathlib.Path) -> dict[str, list]:
    """Input name -> list of dims as the ONNX file declares them (int, or the symbolic name as str)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    shapes = {}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        dims = []
        for d in inp.type.tensor_type.shape.dim:
            dims.append(d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?"))
        shapes[inp.name] = dims
    return shapes


def has_dynamic_axis(path: str | pathlib.Path, input_name: str, axis: int = 0) -> bool:
    """True when ``input_name``'s ``axis`` is symbolic (not a fixed number) in the ONNX file."""
    dims = input_shapes(path)[input_name]
    return not isinstance(dims[axis], int)


def run_onnx(path: str | pathlib.Path, feeds: dict[str, np.ndarray], threads: int = 1) -> list[np.ndarray]:
    from optcourse.measure.bench import ort_session

    return ort_session(path, threads=threads).run(None, feeds)


def max_abs_diff(torch_model: torch.nn.Module, onnx_path: str | pathlib.Path,
                 feeds: dict[str, np.ndarray]) -> float:
    """Largest |PyTorch - ONNX Runtime| over the first output, on the same inputs (model in eval mode)."""
    torch_model.eval()
    with torch.no_grad():
        ref = torch_model(*(torch.from_numpy(v) for v in feeds.values()))
    ref = ref[0] if isinstance(ref, (tuple, list)) else ref
    got = run_onnx(onnx_path, feeds)[0]
    return float(np.max(np.abs(ref.numpy() - got)))
