"""Command line: python -m optcourse.quiz {validate,generate,grade,export,summary} ...

Exit status: 0 on success; 1 when the bank is invalid (validate) or when any graded
response file had problems (grade); 2 for usage errors.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from . import bank as bank_module
from .export import export_gift, export_qti
from .generate import build_quiz, write_quiz
from .grade import grade_all, load_keys, write_csv, write_feedback
from .item_analysis import write_item_analysis


def cmd_validate(args) -> int:
    bank_files = bank_module.load_bank_files(Path(args.bank))
    problems = bank_module.bank_problems(bank_files)
    for problem in problems:
        print(f"ERROR {problem}")
    total = sum(len(document.get("questions", [])) for document in bank_files.values())
    print(f"{total} questions in {len(bank_files)} files: {'INVALID' if problems else 'valid'}")
    return 1 if problems else 0


def cmd_generate(args) -> int:
    students = list(args.student or [])
    if args.roster:   # the class list the labs' autograder reads too (login, name and/or lms_id)
        from optcourse.autograde.roster import Roster, RosterError

        try:
            students += [s.login for s in Roster.load(args.roster).students if s.login not in students]
        except RosterError as error:
            raise ValueError(str(error)) from None
    if not students:
        raise ValueError("no student: give --student ID (repeatable) or --roster roster.csv")
    questions = bank_module.load_bank(Path(args.bank))
    for student in students:
        student_quiz, key = build_quiz(questions, student, args.seed, args.n)
        paths = write_quiz(student_quiz, key, Path(args.out), Path(args.key_dir))
        print(f"{student}: {paths['quiz']} (+ .md); key -> {paths['key']}")
    return 0


def cmd_grade(args) -> int:
    keys = load_keys(args.key)
    results = grade_all(args.key, args.responses)
    write_csv(results, args.csv)
    if args.feedback:
        write_feedback(results, keys, args.feedback)
    if args.item_analysis:
        paths = write_item_analysis(results, args.item_analysis)
        print(f"item analysis -> {paths['csv']}, plot in {paths['html']}")
    for result in results:
        print(f"{result.response_path.name}: {result.student or '?'} {result.score:g}/{result.max_score:g} "
              f"[{result.status}]")
        for problem in result.problems:
            print(f"    - {problem}")
    with_problems = sum(bool(result.problems) for result in results)
    print(f"graded {len(results)} file(s), {with_problems} with problems; scores -> {args.csv}")
    return 1 if with_problems else 0


def cmd_export(args) -> int:
    questions = bank_module.load_bank(Path(args.bank))
    if args.lecture:
        questions = [q for q in questions if q["lecture"] in args.lecture]
    exporter = export_gift if args.format == "gift" else export_qti
    path = exporter(questions, args.out)
    print(f"exported {len(questions)} questions as {args.format} -> {path}")
    return 0


def cmd_summary(args) -> int:
    from .summary import summary

    with tempfile.TemporaryDirectory() as tmpdir:
        rows = summary(tmpdir)
    for row in rows:
        print(f"{'PASS' if row['passed'] else 'FAIL'}  {row['metric']}: {row['measured']} (threshold {row['threshold']})")
    return 0 if all(row["passed"] for row in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m optcourse.quiz", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="check the question bank against the schema and rules")
    validate.add_argument("--bank", default=str(bank_module.BANK_DIR))
    validate.set_defaults(run=cmd_validate)

    generate = commands.add_parser("generate", help="draw per-student quizzes and instructor keys")
    generate.add_argument("--seed", type=int, required=True)
    generate.add_argument("--student", action="append", help="student id (repeatable)")
    generate.add_argument("--roster", help="a roster CSV (login, and name and/or lms_id; the one `make autograde "
                                           "ROSTER=` reads): a quiz for every login")
    generate.add_argument("--n", type=int, default=25, help="questions per quiz (default 25)")
    generate.add_argument("--out", required=True, help="folder for student files (quiz_<id>.json/.md)")
    generate.add_argument("--key-dir", default=str(bank_module.QUIZ_DIR / "keys"),
                          help="folder for instructor keys (default quiz/keys, git-ignored)")
    generate.add_argument("--bank", default=str(bank_module.BANK_DIR))
    generate.set_defaults(run=cmd_generate)

    grade = commands.add_parser("grade", help="grade response files against keys")
    grade.add_argument("--key", required=True, help="a key file or a folder of key_*.json")
    grade.add_argument("--responses", required=True, help="a response file or a folder of *.json")
    grade.add_argument("--csv", required=True, help="where to write the score table")
    grade.add_argument("--feedback", help="folder for per-student feedback Markdown")
    grade.add_argument("--item-analysis", help="folder for item_analysis.csv and summary.html (difficulty, "
                       "discrimination, items strong students miss)")
    grade.set_defaults(run=cmd_grade)

    export = commands.add_parser("export", help="export the bank for an LMS")
    export.add_argument("--format", choices=["gift", "qti"], required=True)
    export.add_argument("--out", required=True, help="output file (.gift text, or .zip for qti)")
    export.add_argument("--lecture", type=int, action="append", help="only these lectures (repeatable)")
    export.add_argument("--bank", default=str(bank_module.BANK_DIR))
    export.set_defaults(run=cmd_export)

    summary = commands.add_parser("summary", help="self-check used by the course report")
    summary.set_defaults(run=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (bank_module.BankError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
