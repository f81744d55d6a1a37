"""Quiz tooling for the course: question bank, per-student generation, grading, LMS export.

Command line: python -m optcourse.quiz --help. Instructor guide: quiz/README.md.
"""

from .bank import BankError, load_bank
from .generate import build_quiz, write_quiz
from .grade import grade_all, grade_file, multi_select_credit
from .summary import summary

__all__ = ["BankError", "load_bank", "build_quiz", "write_quiz", "grade_all", "grade_file",
           "multi_select_credit", "summary"]
