"""The course autograder: sandboxed, parallel nbgrader autograding, trusted performance checks,
feedback that never shows hidden tests, and grade export.

``python -m optcourse.autograde LAB SUBMISSIONS`` (``make autograde LAB=...``); see autograder/README.md.
"""
from optcourse.autograde.pipeline import BatchReport, StudentResult, collect_submissions, grade_batch  # noqa: F401
from optcourse.autograde.sandbox import Limits, sandbox_available  # noqa: F401
