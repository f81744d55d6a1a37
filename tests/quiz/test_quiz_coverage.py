"""Every section of the module plan (lectures/topics.yaml) is asked by at least one quiz question."""

import yaml

from optcourse.quiz import bank as bank_module

TOPICS = bank_module.REPO_ROOT / "lectures" / "topics.yaml"

# Topic of lectures/topics.yaml -> the questions that ask what its section teaches.
TOPIC_QUESTIONS = {
    "landscape and taxonomy": ["l1-taxonomy-representation"],
    "metrics (latency, percentiles, throughput)": ["l1-p99-meaning", "l1-nearest-rank-p99", "l1-speedup"],
    "latency distributions": ["l1-mean-vs-tail", "l1-cuda-async-timing"],
    "batching and throughput curve": ["l1-batch-throughput", "l1-latency-throughput-truths", "l1-littles-law"],
    "cost vs quality under an SLO": ["l1-cost-per-million-tokens"],
    "roofline (compute vs memory bound)": ["l1-roofline-bound", "l1-roofline-intensity", "l1-roofline-attainable"],
    "optimization workflow": ["l1-workflow-first-step", "l1-amdahl"],
    "architecture (builder, engine, runtime)": ["l2-builder-vs-runtime", "l2-engine-portability"],
    "layer fusion": ["l2-fusion-why", "l2-fusion-traffic"],
    "kernel auto-tuning": ["l2-tactics-timing-cache"],
    "INT8 calibration and mixed precision": ["l2-calibrator-deprecated", "l2-mixed-precision-fix",
                                             "l2-fp16-flag-semantics"],
    "dynamic shapes": ["l2-optimization-profile", "l2-profile-activation-memory"],
    "TensorRT API and plugins": ["l2-plugins"],
    "ONNX format": ["l3-opset-meaning", "l3-qdq-vs-qoperator"],
    "execution providers": ["l3-ep-priority", "l3-cpu-fallback"],
    "graph optimizations": ["l3-optimization-levels", "l3-default-level"],
    "performance tuning": ["l3-threading"],
    "profiling": ["l3-profiling", "l3-profile-amdahl"],
    "deployment of optimized models": ["l3-save-optimized", "l3-quantized-size"],
    "debugging": ["l3-debug-numerics", "l3-fp16-tolerance"],
    "quantization arithmetic": ["l4-affine-scale", "l4-affine-zero-point", "l4-symmetric-quantize",
                                "l4-rounding-error"],
    "symmetric vs affine, per-tensor vs per-channel": ["l4-per-channel", "l4-symmetric-relu"],
    "outliers (SmoothQuant)": ["l4-calibration-methods", "l4-llm-weight-methods"],
    "FP16, BF16, FP8": ["l4-fp8-formats", "l4-bf16-vs-fp16"],
    "PTQ vs QAT": ["l4-ste"],
    "INT8 in ONNX Runtime": ["l3-quantization-apis", "l4-int8-not-always-faster"],
    "INT4, AWQ, GPTQ": ["l4-group-bits", "l4-llm-weight-methods"],
    "accuracy preservation": ["l4-sensitive-layers"],
    "structured and unstructured pruning, magnitude and gradient based": ["l5-gradient-importance"],
    "unstructured pruning, sparsity vs accuracy": ["l5-unstructured-no-speedup", "l5-24-hardware",
                                                   "l5-24-storage", "l5-lottery-ticket"],
    "structured pruning speedup": ["l5-structured-bn"],
    "knowledge distillation": ["l5-kd-statements", "l5-distillation-temperature"],
    "LoRA": ["l5-lora-params", "l5-lora-scaling", "l5-lora-merge"],
    "QLoRA": ["l5-qlora-memory", "l5-qlora-components"],
    "challenges at scale (prefill vs decode)": ["l6-prefill-vs-decode", "l6-decode-bound", "l6-ridge-batch",
                                                "l6-prefill-time"],
    "vLLM and PagedAttention": ["l6-paged-attention"],
    "speculative decoding": ["l6-speculative-tokens", "l6-speculative-exact", "l6-speculative-speedup",
                             "l6-speculative-when-slower"],
    "FlashAttention": ["l6-flash-attention"],
    "MQA and GQA": ["l6-mqa-gqa"],
    "tensor and pipeline parallelism": ["l6-tp-vs-pp", "l6-tp-memory", "l6-pipeline-bubble"],
    "TensorRT-LLM, SGLang, TGI, DeepSpeed-Inference, Triton": ["l6-trtllm-inflight", "l6-radix-attention"],
    "profiling decode": ["l6-profile-decode"],
    "batching algorithms": ["l7-continuous-vs-dynamic", "l7-chunked-prefill", "l7-static-waste"],
    "KV cache management": ["l7-kv-per-token", "l7-blocks-needed", "l7-paged-fragmentation"],
    "prefix caching": ["l7-prefix-blocks-saved"],
    "KV cache quantization": ["l7-fp8-kv"],
    "memory optimization": ["l7-kv-memory-budget", "l7-tokens-in-budget", "l7-kv-batch-gib"],
    "request scheduling and prioritization": ["l7-priority-scheduling", "l7-preemption"],
    "cost vs quality and model routing": ["l7-cascade-threshold", "l7-router-vs-cascade", "l7-cascade-cost"],
    "multi-model serving": ["l7-multi-lora", "l7-gpu-sharing", "l7-triton-one-process"],
    "response, prefix and embedding caching": ["l7-semantic-cache-risk", "l7-cache-levels"],
    "monitoring (Prometheus, nvidia-smi)": ["l7-prefix-hit-rate", "l7-kv-pressure-alerts", "l7-gpu-util-meaning",
                                            "l7-fleet-p99-ttft", "l7-serving-metrics", "l7-tpot"],
    "guardrails, canary and rollback": ["l7-constrained-decoding", "l7-canary-rule", "l7-guardrail-layers"],
}


def test_every_topic_of_the_module_plan_has_questions():
    topics = yaml.safe_load(TOPICS.read_text(encoding="utf-8"))
    planned = {topic for lecture in topics.values() for topic in lecture}
    assert planned - set(TOPIC_QUESTIONS) == set(), "topics without quiz questions"
    assert set(TOPIC_QUESTIONS) - planned == set(), "mapped topics no longer in lectures/topics.yaml"


def test_mapped_questions_exist_in_the_lecture_of_their_topic():
    topics = yaml.safe_load(TOPICS.read_text(encoding="utf-8"))
    lecture_of_topic = {topic: int(notebook[:2]) for notebook, lecture in topics.items() for topic in lecture}
    questions = {q["id"]: q for q in bank_module.load_bank()}
    for topic, ids in TOPIC_QUESTIONS.items():
        for question_id in ids:
            assert question_id in questions, (topic, question_id)
            # INT8 in ONNX Runtime is also asked in lecture 3, where the API is taught.
            if topic != "INT8 in ONNX Runtime":
                assert questions[question_id]["lecture"] == lecture_of_topic[topic], (topic, question_id)


def test_every_question_answers_some_topic():
    mapped = {question_id for ids in TOPIC_QUESTIONS.values() for question_id in ids}
    unmapped = {q["id"] for q in bank_module.load_bank()} - mapped
    assert unmapped == set(), "map each question to the section it asks about"
