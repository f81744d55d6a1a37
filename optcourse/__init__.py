"""optcourse: the course library that the lectures, labs, autograder and quiz import.

Modules:
    paths       where files live; the offline environment (no model hub, caches in the workspace)
    hardware    the ``cpu`` / ``cuda`` profile and which backends (TensorRT, ORT providers, vLLM) exist
    models      the offline model zoo: digits ResNet, all-MiniLM-L6-v2, the course's small Llama
    bench       timing done right: warm-up, repetitions, percentiles, alternating A/B rounds
    metrics     the metrics convention notebooks use, and threshold checks per hardware profile
    runner      executes notebooks with papermill and writes the summary table and report
    quiz        the quiz bank, generation, grading and LMS exports
"""

__version__ = "0.1.0"
