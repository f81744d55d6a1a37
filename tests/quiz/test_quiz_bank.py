"""The question bank: schema, coverage, uniqueness, and the numbers behind numeric questions."""

import copy
import math
from collections import Counter

import pytest

from optcourse.quiz import bank as bank_module
from optcourse.quiz import formulas

GIB, MIB, KIB = 2**30, 2**20, 2**10


@pytest.fixture(scope="module")
def bank_files():
    return bank_module.load_bank_files()


@pytest.fixture(scope="module")
def questions():
    return bank_module.load_bank()


def test_bank_files_validate_against_schema_and_rules(bank_files):
    assert bank_module.bank_problems(bank_files) == []


def test_one_file_per_lecture_and_at_least_63_questions(bank_files, questions):
    assert sorted(document["lecture"] for document in bank_files.values()) == list(range(1, 8))
    assert len(questions) >= 63


def test_every_lecture_has_at_least_8_questions(questions):
    per_lecture = Counter(question["lecture"] for question in questions)
    assert all(per_lecture[lecture] >= 8 for lecture in range(1, 8)), per_lecture


def test_every_kind_is_used_and_every_lecture_has_numeric_questions(questions):
    assert {q["kind"] for q in questions} == {"single", "multi", "numeric", "truefalse"}
    assert {q["lecture"] for q in questions if q["kind"] == "numeric"} == set(range(1, 8))


def test_ids_are_unique(questions):
    ids = [question["id"] for question in questions]
    assert len(ids) == len(set(ids))


def test_single_choice_has_exactly_one_correct_option(questions):
    for question in (q for q in questions if q["kind"] == "single"):
        assert sum(bool(c.get("correct")) for c in question["choices"]) == 1, question["id"]


def test_multi_select_correct_counts_vary_from_one_to_all_but_one(questions):
    counts = Counter(sum(bool(c.get("correct")) for c in q["choices"]) for q in questions if q["kind"] == "multi")
    assert set(counts) == {1, 2, 3, 4}, counts  # 1 to 4 of 5: the count of correct options gives nothing away
    assert max(counts.values()) <= 0.4 * sum(counts.values()), counts


def test_required_fields_present(questions):
    for question in questions:
        for field in ("id", "lecture", "objective", "kind", "prompt", "explanation", "points"):
            assert question.get(field) not in (None, ""), (question["id"], field)


def test_numeric_questions_name_a_formula_and_parameterised_ones_vary(questions):
    numeric = [q for q in questions if q["kind"] == "numeric"]
    assert all(q["formula"] in formulas.FORMULAS for q in numeric)
    parameterised = [q for q in numeric if any("choices" in s or "range" in s for s in q["params"].values())]
    assert len(parameterised) >= 20
    for question in parameterised:
        answers = {bank_module.numeric_answer(question, p) for p in bank_module.all_param_combinations(question)}
        assert len(answers) > 1, f"{question['id']}: every draw gives the same answer"


@pytest.mark.parametrize("mutate, message", [
    (lambda q: q["choices"][1].update(correct=True), "exactly one correct"),
    (lambda q: q["choices"][0].update(text=q["choices"][0]["text"] * 2), "length hints at the key"),
    (lambda q: q.update(formula="no_such_formula"), None),
    (lambda q: q.pop("explanation"), "explanation"),
])
def test_broken_banks_are_rejected(bank_files, mutate, message):
    broken = copy.deepcopy(bank_files)
    document = next(iter(broken.values()))
    target_kind = "numeric" if message is None else "single"
    mutate(next(q for q in document["questions"] if q["kind"] == target_kind))
    problems = bank_module.bank_problems(broken)
    assert problems
    if message:
        assert any(message in problem for problem in problems)


# Default-draw answers recomputed by hand, independently of formulas.py. A new numeric
# question must be added here, so every number a student sees is checked twice.
HAND_COMPUTED_DEFAULT_ANSWERS = {
    "l1-amdahl": 1 / (0.4 + 0.6 / 3),
    "l1-cost-per-million-tokens": 2.5 / (1000 * 3600) * 1e6,
    "l1-littles-law": 50 * 1.5,
    "l1-batch-throughput": 32 / 0.080,
    "l1-nearest-rank-p99": 999,  # ceil(99.9 * 1000 / 100), exactly
    "l1-roofline-intensity": 2 * 256 * 4096 * 4096 / ((4096 * 4096 + 256 * 8192) * 2),
    "l1-roofline-attainable": 64 * 3.35,  # memory-bound: below the ridge of 989 / 3.35
    "l1-speedup": 42 / 12,
    "l2-fusion-traffic": 2 * 2 * 16e6 * 2 / MIB,
    "l2-profile-activation-memory": 256.0,  # 32 * 1024 * 4096 * 2 B = 256 MiB
    "l3-quantized-size": 50 + 450 / 4,
    "l3-profile-amdahl": 1 / (0.3 + 0.7 / 2),
    "l4-affine-scale": 4 / 255,
    "l4-affine-zero-point": 64,  # 1 / (4/255) = 63.75
    "l4-symmetric-quantize": 19,  # 0.37 / (2.5/127) = 18.8
    "l4-group-bits": 4 + 20 / 128,
    "l4-rounding-error": 0.025,  # 6.35 / 127 / 2
    "l5-24-storage": 36 / 64,
    "l5-distillation-temperature": 1 / (1 + math.exp(-2)),
    "l5-lora-params": 16 * (4096 + 4096) * 64,
    "l5-lora-scaling": 2.0,
    "l5-qlora-memory": 65e9 * (4 + 0.125 + 32 / 16384) / 8 / GIB,
    "l6-decode-bound": 14e9 / 3.35e12 * 1e3,
    "l6-ridge-batch": 989 / 3.35,
    "l6-speculative-tokens": 1 + 0.8 + 0.64 + 0.512 + 0.4096,
    "l6-tp-memory": 140e9 / GIB / 4,
    "l6-prefill-time": 2 * 8e9 * 2048 / (989e12 * 0.5) * 1e3,
    "l6-pipeline-bubble": 3 / 11,
    "l6-speculative-speedup": (1 + 0.8 + 0.64 + 0.512 + 0.4096) / (4 * 0.05 + 1),
    "l7-kv-per-token": 512.0,  # Llama-2-7B: 2 * 32 * 32 * 128 * 2 B
    "l7-kv-batch-gib": 20.0,  # 320 KiB/token * 4096 * 16
    "l7-tokens-in-budget": 327680,  # 40 GiB / 128 KiB
    "l7-blocks-needed": 45,  # ceil(717 / 16)
    "l7-prefix-blocks-saved": 448,  # 7 * floor(1030 / 16)
    "l7-tpot": 3150 / 255,
    "l7-static-waste": 1 - 600 / 4096,
    "l7-cascade-cost": 2 + 0.3 * 40,
}


def test_every_numeric_default_answer_matches_hand_computation(questions):
    numeric = {q["id"]: q for q in questions if q["kind"] == "numeric"}
    assert set(numeric) == set(HAND_COMPUTED_DEFAULT_ANSWERS)
    for question_id, expected in HAND_COMPUTED_DEFAULT_ANSWERS.items():
        assert bank_module.numeric_answer(numeric[question_id]) == pytest.approx(expected, rel=1e-9), question_id


def test_formulas_against_published_reference_values():
    # Llama-2-70B (80 layers, 8 KV heads, head_dim 128): 320 KiB per token in FP16.
    assert formulas.kv_cache_kib_per_token(80, 8, 128, "fp16") == 320
    assert formulas.kv_cache_kib_per_token(80, 8, 128, "fp8") == 160
    # QLoRA paper: double quantization saves ~0.373 bits per parameter (0.5 -> 0.127).
    assert 4.5 - formulas.nf4_double_quant_bits_per_param(64, 256) == pytest.approx(0.373, abs=1e-3)
    # A 7B FP16 model is ~13 GiB of weights.
    assert formulas.model_weights_gib(7, "fp16") == pytest.approx(13.04, abs=0.01)
    # Speculative decoding with perfect acceptance produces all drafts plus one.
    assert formulas.speculative_expected_tokens(1.0, 4) == 5
    assert formulas.affine_zero_point(0.0, 6.0, 8) == 0  # a non-negative range has zero point 0
    # Nearest rank in exact arithmetic; the float product 999.0000000000001 would give rank 1000.
    assert math.ceil(99.9 / 100 * 1000) == 1000
    assert formulas.nearest_rank_percentile_index(1000, 99.9) == 999
    assert formulas.nearest_rank_percentile_index(200, 99.9) == 200  # 199.8 rounds up


def test_integer_answers_have_no_rounding_ties(questions):
    """Exact-match integer questions must not hinge on round-half behaviour."""
    for question_id in ("l4-affine-zero-point", "l4-symmetric-quantize"):
        question = next(q for q in questions if q["id"] == question_id)
        for params in bank_module.all_param_combinations(question):
            if question_id == "l4-affine-zero-point":
                raw = -params["range_min"] / ((params["range_max"] - params["range_min"]) / 255)
            else:
                raw = params["value"] / (params["abs_max"] / 127)
            distance_to_half = abs(abs(raw - math.trunc(raw)) - 0.5)
            assert distance_to_half > 0.02, (question_id, params, raw)
