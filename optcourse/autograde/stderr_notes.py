"""Warnings cost no points: what a test cell writes to stderr becomes a visible note on stdout.

nbgrader scores 0 any graded code cell with a ``stderr`` stream output (``nbgrader.utils.determine_grade``),
so correct code that makes a library print a warning (torch's ``UserWarning`` on ``torch.tensor(tensor)``,
a deprecation notice) would lose the test's points. This preprocessor runs right after execution, before
nbgrader saves the grades, in the class autograder (``inner``), the unsandboxed helper (``optcourse.course.grade_notebook``)
and ``make validate``: each stderr output of a graded test cell is kept, as stdout text under ``NOTE``.
A failing test still fails: failure is an error output, which this leaves alone.
"""
from __future__ import annotations

from nbformat.v4 import new_output
from nbgrader import utils
from nbgrader.preprocessors import NbGraderPreprocessor

NOTE = "[autograder note] written to stderr while this test ran (a warning?); it does not cost points:"


def stderr_to_notes(cell) -> list[str]:
    """Rewrite ``cell``'s stderr outputs as stdout notes in place; returns the texts that were moved."""
    moved, outputs = [], []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            text = str(out.get("text", ""))
            moved.append(text)
            out = new_output("stream", name="stdout", text=f"{NOTE}\n{text}")
        outputs.append(out)
    cell.outputs = outputs
    return moved


class StderrAsNotes(NbGraderPreprocessor):
    """Turn stderr of graded test cells into notes (see the module docstring)."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and utils.is_grade(cell) and not utils.is_solution(cell):
            stderr_to_notes(cell)
        return cell, resources


def autograde_preprocessors(execute=None) -> list:
    """nbgrader's default autograde preprocessors with ``execute`` (default: nbgrader's ``Execute``) in
    place of ``Execute`` and ``StderrAsNotes`` right after it."""
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import Execute

    steps = []
    for step in Autograde.class_traits()["autograde_preprocessors"].default():
        if step is Execute:
            steps += [execute or Execute, StderrAsNotes]
        else:
            steps.append(step)
    return steps
