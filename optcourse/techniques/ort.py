"""ONNX Runtime as a graph optimizer: optimize a model to a file, count its operators, read its profiler trace."""
from __future__ import annotations

import collections
import json
import os
import pathlib

from optcourse.measure.bench import ort_optimization_level


def ort_optimize(src: str | os.PathLike, dst: str | os.PathLike, level: str = "all") -> pathlib.Path:
    """Let ONNX Runtime's CPU provider optimize ``src`` at ``level`` and save the result to ``dst``."""
    import onnxruntime as ort

    dst = pathlib.Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort_optimization_level(level)
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3  # the NCHWc "hardware specific" notice at level all is expected
    ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
    return dst


def transformer_optimize(src: str | os.PathLike, dst: str | os.PathLike, num_heads: int, hidden_size: int,
                         model_type: str = "bert") -> tuple[pathlib.Path, dict[str, int]]:
    """ONNX Runtime's offline transformer optimizer (``onnxruntime.transformers.optimizer``): fuse attention,
    embedding + LayerNorm, Skip-LayerNorm and GELU into contrib ops; save to ``dst``. Returns ``(dst, the fused
    operators that were created, op -> count)``. Attention fuses only when the exported subgraph matches its
    patterns (an eager-attention export does; PyTorch's SDPA export, with its Where/IsNaN masking, does not)."""
    from onnxruntime.transformers import optimizer

    dst = pathlib.Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # opt_level=0: only the offline fusions, so that ORT's own levels still apply when a session loads the result
    model = optimizer.optimize_model(str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                                     opt_level=0)
    model.save_model_to_file(str(dst))
    return dst, {op: n for op, n in model.get_fused_operator_statistics().items() if n}


def op_counts(model_path: str | os.PathLike) -> collections.Counter:
    """Operator histogram of an ONNX file's main graph (``domain:op`` for non-default domains)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return collections.Counter(f"{n.domain}:{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                               for n in graph.node)


def profile_op_summary(profile_json: str | os.PathLike) -> list[dict]:
    """Aggregate an ONNX Runtime profile (``enable_profiling``) by operator type, slowest first.

    Rows: ``op``, ``calls``, ``total_us``, ``share`` (of all node kernel time).
    """
    events = json.loads(pathlib.Path(profile_json).read_text())
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for ev in events:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            totals[op][0] += 1
            totals[op][1] += float(ev.get("dur", 0))
    grand = sum(t for _, t in totals.values()) or 1.0
    rows = [{"op": op, "calls": c, "total_us": round(t, 1), "share": round(t / grand, 4)} for op, (c, t) in totals.items()]
    return sorted(rows, key=lambda r: -r["total_us"])
