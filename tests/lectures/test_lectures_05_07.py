"""Execute lectures 5-7 with papermill (smoke parameters) and check what their demos produced.

The bounds of what they measured (speculative decoding returning the target's greedy output, an exact
LoRA merge, the batching simulator beating static batching, ...) live in autograder/thresholds/*.yaml only:
tests/course/test_notebooks.py checks them on the same run. Here: the lecture conventions and the plots.
"""
import json

import pytest

from optcourse.core.paths import REPO_ROOT

LECTURES = REPO_ROOT / "lectures"

PLOTS = {
    "05_pruning_distillation_lora": ["05_pruning_curve.png", "05_nf4_levels.png"],
    "06_llm_inference_optimization": ["06_prefill_decode.png", "06_speculative.png", "06_attention.png"],
    "07_continuous_batching_kv_cache": ["07_batching_timelines.png", "07_cascade.png"],
}


def test_lecture_notebooks_have_parameters_and_takeaways():
    import nbformat

    for name in PLOTS:
        nb = nbformat.read(LECTURES / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), name
        for key in ('device = "auto"', "smoke = True", "metrics_path = None", 'output_dir = "outputs"'):
            assert key in code[0].source, (name, key)
        assert "Key takeaways" in nb.cells[-1].source or any("Key takeaways" in c.source for c in nb.cells)


@pytest.mark.notebooks
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("name", list(PLOTS))
def test_lecture_executes_and_writes_its_plots(name, executed_notebook):
    run = executed_notebook(LECTURES / f"{name}.ipynb")  # shared with tests/course/test_notebooks.py
    assert run.ok, run.error
    recorded = json.loads(run.metrics_path.read_text())["metrics"]
    failures = [f"plot {plot} not written" for plot in PLOTS[name] if not (run.artifacts / plot).is_file()]
    if "vllm_metric_names_found" in recorded and recorded["vllm_metric_names_found"]["value"] != 1.0:
        failures.append("a vLLM metric name shown in lecture 7 is missing from the installed vLLM")
    assert not failures, "\n".join(failures)
