"""Loading and checking the YAML question bank.

The JSON Schema (quiz/schema.json) checks structure; `bank_problems` adds the
rules a schema cannot express: unique ids, exactly one correct option for
single choice, options of similar length, formulas that exist and accept exactly
the declared parameters, prompt placeholders that match the parameters, and no
test-wise strategy (longest option, first option, ...) beating chance over the bank.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import string
from pathlib import Path

import jsonschema
import yaml

from . import formulas
from .testwise import strategy_problems

REPO_ROOT = Path(__file__).resolve().parents[2]
QUIZ_DIR = REPO_ROOT / "quiz"
BANK_DIR = QUIZ_DIR / "bank"
SCHEMA_PATH = QUIZ_DIR / "schema.json"
SAMPLES_DIR = QUIZ_DIR / "samples"

LECTURES = range(1, 8)
# Options of one question may differ in length by this factor at most: length must not hint at the key.
MAX_OPTION_LENGTH_RATIO = 1.6
LECTURE_TITLES: dict[int, str] = {}  # filled from the bank files


class BankError(ValueError):
    """The bank is invalid; the message lists every problem found."""


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def load_bank_files(bank_dir: Path = BANK_DIR) -> dict[Path, dict]:
    files = sorted(Path(bank_dir).glob("*.yaml"))
    if not files:
        raise BankError(f"no *.yaml bank files in {bank_dir}")
    return {path: yaml.safe_load(path.read_text(encoding="utf-8")) for path in files}


def bank_problems(bank_files: dict[Path, dict], schema: dict | None = None) -> list[str]:
    """Every problem in the bank, as readable messages (empty list = valid)."""
    schema = schema or load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    problems: list[str] = []
    seen_ids: dict[str, Path] = {}
    for path, document in bank_files.items():
        schema_errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
        for error in schema_errors:
            location = "/".join(str(part) for part in error.path)
            problems.append(f"{path.name}: {location}: {error.message}")
        if schema_errors:
            continue  # the semantic checks below assume a structurally valid file
        for question in document["questions"]:
            where = f"{path.name}: {question['id']}"
            if question["id"] in seen_ids:
                problems.append(f"{where}: duplicate id (also in {seen_ids[question['id']].name})")
            seen_ids[question["id"]] = path
            if int(question["id"][1]) != document["lecture"]:
                problems.append(f"{where}: id prefix does not match lecture {document['lecture']}")
            problems.extend(f"{where}: {message}" for message in _question_problems(question))
    if not problems:
        questions = [q for document in bank_files.values() for q in document["questions"]]
        problems.extend(strategy_problems(questions))
    return problems


def _question_problems(question: dict) -> list[str]:
    kind = question["kind"]
    if kind in ("single", "multi"):
        num_correct = sum(bool(choice.get("correct")) for choice in question["choices"])
        num_wrong = len(question["choices"]) - num_correct
        texts = [choice["text"] for choice in question["choices"]]
        problems = []
        if len(set(texts)) != len(texts):
            problems.append("duplicate choice texts")
        if kind == "single" and num_correct != 1:
            problems.append(f"single choice needs exactly one correct option, has {num_correct}")
        if kind == "multi" and (num_correct < 1 or num_wrong < 1):
            problems.append("multi select needs at least one correct and one wrong option")
        lengths = [len(text) for text in texts]
        if max(lengths) > MAX_OPTION_LENGTH_RATIO * min(lengths):
            problems.append(f"option lengths {min(lengths)} to {max(lengths)} characters differ by more than "
                            f"{MAX_OPTION_LENGTH_RATIO}x: length hints at the key")
        return problems
    if kind == "numeric":
        return _numeric_problems(question)
    return []


def _numeric_problems(question: dict) -> list[str]:
    name = question["formula"]
    if name not in formulas.FORMULAS:
        return [f"unknown formula {name!r}"]
    problems = []
    expected = set(inspect.signature(formulas.FORMULAS[name]).parameters)
    declared = set(question["params"])
    if expected != declared:
        problems.append(f"params {sorted(declared)} do not match formula {name}{sorted(expected)}")
        return problems
    for param_name, spec in question["params"].items():
        if "choices" in spec and spec["default"] not in spec["choices"]:
            problems.append(f"default of {param_name} is not among its choices")
        if "range" in spec and not spec["range"]["min"] <= spec["default"] <= spec["range"]["max"]:
            problems.append(f"default of {param_name} is outside its range")
    placeholders = {field for _, field, _, _ in string.Formatter().parse(question["prompt"]) if field}
    unknown = {field.split(".")[0].split("[")[0] for field in placeholders} - declared
    if unknown:
        problems.append(f"prompt uses unknown placeholders {sorted(unknown)}")
    drawn = [p for p, spec in question["params"].items() if "choices" in spec or "range" in spec]
    missing_in_prompt = [p for p in drawn if p not in placeholders]
    if missing_in_prompt:
        problems.append(f"drawn parameters not shown in the prompt: {missing_in_prompt}")
    try:
        for params in all_param_combinations(question):
            formulas.evaluate(name, params)
    except (ArithmeticError, ValueError) as error:
        problems.append(f"formula fails for some parameter draw: {error}")
    return problems


def load_bank(bank_dir: Path = BANK_DIR) -> list[dict]:
    """All questions (each with its `lecture`), in file order; raises BankError if invalid."""
    bank_files = load_bank_files(bank_dir)
    problems = bank_problems(bank_files)
    if problems:
        raise BankError("invalid question bank:\n  " + "\n  ".join(problems))
    questions = []
    for document in bank_files.values():
        LECTURE_TITLES[document["lecture"]] = document["title"]
        for question in document["questions"]:
            questions.append({**question, "lecture": document["lecture"]})
    return questions


def bank_fingerprint(questions: list[dict]) -> str:
    """Short hash of the bank content; keys record it so stale keys can be spotted."""
    canonical = json.dumps(questions, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


# --- numeric parameters -------------------------------------------------------

def param_values(spec: dict) -> list:
    """Every value a parameter can take (its default alone when it is fixed)."""
    if "choices" in spec:
        return list(spec["choices"])
    if "range" in spec:
        low, high, step = spec["range"]["min"], spec["range"]["max"], spec["range"]["step"]
        count = int(round((high - low) / step)) + 1
        # Rounding keeps drawn values printable (0.3, not 0.30000000000000004).
        return [round(low + i * step, 10) for i in range(count)]
    return [spec["default"]]


def default_params(question: dict) -> dict:
    return {name: spec["default"] for name, spec in question["params"].items()}


def draw_params(question: dict, rng) -> dict:
    return {name: rng.choice(param_values(spec)) for name, spec in question["params"].items()}


def all_param_combinations(question: dict):
    import itertools

    names = list(question["params"])
    for values in itertools.product(*(param_values(question["params"][n]) for n in names)):
        yield dict(zip(names, values))


def render_prompt(question: dict, params: dict | None = None) -> str:
    if question["kind"] != "numeric":
        return question["prompt"]
    return question["prompt"].format(**(params if params is not None else default_params(question)))


def numeric_answer(question: dict, params: dict | None = None) -> float:
    return formulas.evaluate(question["formula"], params if params is not None else default_params(question))
