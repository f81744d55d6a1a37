"""Rebuild the shipped sample quiz, key and responses (run from the repository root).

    .venv/bin/python quiz/samples/make_samples.py

The responses are written from the hand-chosen answers below, addressed by question
number in the sample quiz (seed 2024, student "sample"). Their expected scores are
computed by hand in tests/quiz/test_quiz_grading.py, not by the grader, so if the
bank changes which questions are drawn, re-check those numbers.

`class/` holds a small class for item analysis (`make quiz-grade`): six students who
answer the questions listed in CLASS_CORRECT right and every other question wrong.
tests/quiz/test_quiz_item_analysis.py checks the analysis against a hand computation.
"""

import json
import subprocess
import sys
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent
SEED, STUDENT = 2024, "sample"

# Question number -> answer. Comments give the credit the grader must award.
PARTIAL_ANSWERS = {
    1: "a",                      # single, lower case accepted: 1/1
    2: 30,                       # numeric exact: 2/2
    3: ["A", "C", "E"],          # multi, 2 correct + 1 wrong of 2 correct: (2-1)/2*2 = 1
    4: True,                     # true/false wrong: 0/1
    5: "B",                      # single wrong: 0/1
    6: "D", 7: True,             # 1 + 1
    8: ["C"],                    # multi, 1 of 2 correct, no wrong: 1/2*2 = 1
    9: "D", 10: "A",             # 1 + 1
    11: "A",                     # wrong: 0
    12: 18,                      # integer answer 19 with abs tolerance 0: 0/2
    13: 0.00504,                 # 0.8% off, rel tolerance 1%: 2/2
    14: ["A", "B", "C", "E"],    # multi, all 4 correct: 2/2
    15: False,                   # 1
    16: 0.5,                     # 0.5625 expected: 0/2
    17: "C", 18: "D",            # 1 + 1
    19: ["B", "E"],              # multi all correct: 2/2
    20: 2.228,                   # 2.176 expected, 2.4% off: 0/2
    21: "B", 22: "C",            # 1 + 1
    23: ["A", "D", "E"],         # multi, 1 correct + 2 wrong of 1 correct: floored at 0
    24: 491520,                  # 2/2
    25: "A",                     # wrong: 0
}                                # total 22 of 36

# Student file -> question numbers answered correctly. Stronger students know more, except
# question 25, which only the two weakest get right: the item analysis must flag it.
CLASS_CORRECT = {
    f"student{k}.json": set(range(1, 4 * k + 1)) | ({25} if k <= 2 else set()) for k in range(1, 7)
}


def wrong_answer(question: dict):
    """An answer of the right form that earns nothing."""
    if question["kind"] == "single":
        return next(c["label"] for c in question["choices"] if not c["correct"])
    if question["kind"] == "multi":
        return [next(c["label"] for c in question["choices"] if not c["correct"])]
    if question["kind"] == "truefalse":
        return not question["correct"]
    return question["correct"] * 2 + 1


def write_class_responses(key: dict) -> None:
    folder = SAMPLES / "class"
    folder.mkdir(exist_ok=True)
    for name, correct_numbers in CLASS_CORRECT.items():
        answers = {q["id"]: q["correct"] if q["number"] in correct_numbers else wrong_answer(q)
                   for q in key["questions"]}
        (folder / name).write_text(json.dumps({"format": "optcourse-quiz-response", "quiz_id": key["quiz_id"],
                                               "student": STUDENT, "answers": answers}, indent=2) + "\n",
                                   encoding="utf-8")


def main() -> None:
    subprocess.run([sys.executable, "-m", "optcourse.quiz", "generate", "--seed", str(SEED), "--student", STUDENT,
                    "--out", str(SAMPLES), "--key-dir", str(SAMPLES / "key")], check=True)
    key = json.loads((SAMPLES / "key" / f"key_{STUDENT}.json").read_text(encoding="utf-8"))
    by_number = {question["number"]: question for question in key["questions"]}
    responses = SAMPLES / "responses"
    responses.mkdir(exist_ok=True)

    def write(name: str, answers: dict, quiz_id: str = key["quiz_id"]) -> str:
        text = json.dumps({"format": "optcourse-quiz-response", "quiz_id": quiz_id, "student": STUDENT,
                           "answers": answers}, indent=2) + "\n"
        (responses / name).write_text(text, encoding="utf-8")
        return text

    perfect = {question["id"]: question["correct"] for question in key["questions"]}
    perfect[by_number[20]["id"]] = 2.18   # rounded answers inside the tolerance still earn full credit
    perfect[by_number[13]["id"]] = 0.00501
    perfect_text = write("perfect.json", perfect)
    write("partial.json", {by_number[n]["id"]: answer for n, answer in PARTIAL_ANSWERS.items()})

    broken = dict(perfect)
    del broken[by_number[1]["id"]]               # missing (1 point)
    broken[by_number[2]["id"]] = "30"            # number as string (2)
    broken[by_number[3]["id"]] = "B,C,D"         # multi as string (2)
    broken[by_number[4]["id"]] = "false"         # boolean as string (1)
    broken[by_number[5]["id"]] = ["A"]           # single as list (1)
    broken[by_number[11]["id"]] = "Z"            # label that does not exist (1)
    broken[by_number[12]["id"]] = None           # explicit null = unanswered (2)
    broken["l9-bogus"] = "A"                     # unknown question id: reported, ignored
    write("missing_and_wrong_type.json", broken)  # 36 - 10 = 26
    write("wrong_quiz_id.json", perfect, quiz_id="2023-sample-00000000")
    (responses / "malformed.json").write_text(perfect_text[: len(perfect_text) // 2] + "\n", encoding="utf-8")
    write_class_responses(key)


if __name__ == "__main__":
    main()
