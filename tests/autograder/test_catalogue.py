"""The mistakes-catalogue machinery (optcourse.autograde.catalogue): loading, applying, combining, judging.
The real catalogues are graded through the class autograder in tests/labs/test_lab_contract.py."""
from __future__ import annotations

import nbformat
import pytest

from optcourse.autograde import catalogue, pipeline
from optcourse.autograde.perf import CheckResult
from optcourse.course.release import SOLUTIONS_DIR, lab_names


def mistake(mid, cells, loses):
    return catalogue.Mistake(mid, "why", tuple(catalogue.Edit(c, "a", "b") for c in cells), frozenset(loses))


def test_load_validates_entries(tmp_path):
    path = tmp_path / "mistakes.yaml"
    path.write_text("- id: m1\n  why: w\n  edits: [{cell: c1, replace: x, with: y}]\n  loses: [t1]\n")
    [m] = catalogue.load("lab", path)
    assert (m.id, m.cells, m.loses) == ("m1", {"c1"}, frozenset({"t1"}))
    for bad in ("- id: m1\n  why: w\n  edits: []\n  loses: [t1]\n",
                "- id: m1\n  why: w\n  edits: [{cell: c1, replace: x, with: x}]\n  loses: [t1]\n",
                "- id: m1\n  edits: [{cell: c1, replace: x, with: y}]\n  loses: [t1]\n",
                "- id: m1\n  why: w\n  edits: [{cell: c1, replace: x, with: y}]\n  loses: []\n"):
        path.write_text(bad)
        with pytest.raises(ValueError):
            catalogue.load("lab", path)


def test_apply_needs_exactly_one_match():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "a = 1\nb = 2", metadata={"nbgrader": {"grade_id": "c1"}})])
    edited = catalogue.apply(nb, [catalogue.Mistake("m", "w", (catalogue.Edit("c1", "a = 1", "a = 2"),), frozenset())])
    assert edited.cells[0].source == "a = 2\nb = 2" and nb.cells[0].source == "a = 1\nb = 2"
    for edit in (catalogue.Edit("c1", "zzz", "y"), catalogue.Edit("c1", " = ", "y"), catalogue.Edit("nope", "a", "b")):
        with pytest.raises(ValueError):
            catalogue.apply(nb, [catalogue.Mistake("m", "w", (edit,), frozenset())])


def test_combine_shares_a_cell_only_where_the_edits_apply_together_and_never_a_lost_cell():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src, metadata={"nbgrader": {"grade_id": gid}})
                                         for gid, src in (("c1", "a = 1\nb = 2"), ("c2", "c = 3"), ("c3", "d = 4"))])

    def m(mid, edits, loses):
        return catalogue.Mistake(mid, "why", tuple(catalogue.Edit(*e) for e in edits), frozenset(loses))

    ms = [m("a", [("c1", "a = 1", "a = 0")], ["t1"]),
          m("b", [("c1", "b = 2", "b = 0")], ["t2"]),        # same cell, other line: shares a's notebook
          m("a_again", [("c1", "a = 1", "a = 5")], ["t3"]),  # a's line, already rewritten by a: a notebook of its own
          m("c", [("c2", "c = 3", "c = 0")], ["t1"]),        # loses a's cell: not with a
          m("d", [("c3", "d = 4", "d = 0")], ["t4"])]
    groups = catalogue.combine(ms, nb)
    assert [[x.id for x in g] for g in groups] == [["a", "b", "d"], ["a_again", "c"]]
    for g in groups:
        catalogue.apply(nb, g)
        assert sum(len(x.loses) for x in g) == len(set().union(*(x.loses for x in g)))


def _report(students):
    results = []
    for name, cells, perf in students:
        res = pipeline.StudentResult(name, "graded", {
            g: pipeline.CellGrade(g, s, m, "passed" if s == m else "failed") for g, (s, m) in cells.items()})
        res.perf = [CheckResult(n, s, m, s == m, "") for n, (s, m) in perf.items()]
        results.append(res)
    return pipeline.BatchReport("lab", results, None, 0.0, "")


def test_check_finds_every_broken_promise():
    full = {"t1": (2, 2), "t2": (3, 3), "manual": (None, 1)}
    plan = {"solution": "solution", "blank": "blank", "mistakes-1": [mistake("m1", ["c1"], ["t1", "perf:speed"])]}
    good = _report([("solution", full, {"speed": (2, 2)}),
                    ("blank", {"t1": (0, 2), "t2": (0, 3)}, {"speed": (0, 2)}),
                    ("mistakes-1", {"t1": (0, 2), "t2": (3, 3)}, {"speed": (0, 2)})])
    assert catalogue.check(good, plan) == []
    bad = _report([("solution", {"t1": (2, 2), "t2": (1, 3)}, {"speed": (2, 2)}),
                   ("blank", {"t1": (0, 2), "t2": (3, 3)}, {"speed": (0, 2)}),
                   ("mistakes-1", {"t1": (2, 2), "t2": (0, 3)}, {"speed": (0, 2)})])
    problems = catalogue.check(bad, plan)
    assert any(p.startswith("solution: t2 lost points") for p in problems)
    assert "blank: t2 scored 3/3" in problems
    assert any("t1 scored 2/2 but mistake m1 must lose it" in p for p in problems)
    assert any(p.startswith("mistakes-1: t2 lost points") for p in problems)
    flagged = _report([("solution", full, {"speed": (2, 2)})])
    flagged.results[0].needs_review = True
    assert any("flagged for review" in p for p in catalogue.check(flagged, {"solution": "solution"}))


@pytest.mark.parametrize("lab", lab_names())
def test_every_catalogue_applies_to_its_solution(lab):

    mistakes = catalogue.load(lab)
    solution = nbformat.read(SOLUTIONS_DIR / lab / f"{lab}.ipynb", as_version=4)
    graded = {c.metadata["nbgrader"]["grade_id"] for c in solution.cells
              if c.metadata.get("nbgrader", {}).get("grade")}
    for group in catalogue.combine(mistakes, solution):
        catalogue.apply(solution, group)
    for m in mistakes:
        assert {g for g in m.loses if not g.startswith("perf:")} <= graded, (m.id, m.loses)


# the floor: plausible wrong implementations per graded task
MIN_PER_TASK = {"lab01_tensorrt_int8": 2, "lab02_quantization": 2, "lab03_vllm_deployment": 3, "lab04_benchmarking": 3}


@pytest.mark.parametrize("lab", lab_names())
def test_every_graded_task_has_its_mistakes(lab):
    import re

    solution = nbformat.read(SOLUTIONS_DIR / lab / f"{lab}.ipynb", as_version=4)
    tasks = {re.match(r"test_task(\d+)", c.metadata["nbgrader"]["grade_id"]).group(1)
             for c in solution.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")}
    def counts_for(m, t):   # a mistake the grader's own check catches counts for the task whose cell it edits
        return any(re.match(rf"test_task{t}(?!\d)", g) for g in m.loses) or (
            any(g.startswith("perf:") for g in m.loses) and any(re.match(rf"task{t}_", e.cell) for e in m.edits))

    counts = {t: sum(counts_for(m, t) for m in catalogue.load(lab)) for t in tasks}
    assert all(n >= MIN_PER_TASK[lab] for n in counts.values()), counts


def test_a_hidden_line_in_feedback_is_found_even_spelled_with_invisible_characters(tmp_path):
    import nbformat

    from optcourse.autograde.pipeline import hidden_test_lines
    from optcourse.course.release import SOLUTIONS_DIR, lab_names

    lab = lab_names()[0]
    solution = nbformat.read(SOLUTIONS_DIR / lab / f"{lab}.ipynb", as_version=4)
    line = next(x for x in hidden_test_lines(solution) if len(x) > 40)
    (tmp_path / "feedback").mkdir()
    (tmp_path / "feedback" / "leaky.html").write_text("<pre>" + "\u200b".join(line).replace("<", "&lt;") + "</pre>")
    (tmp_path / "feedback" / "clean.html").write_text("<pre>a test failed (AssertionError)</pre>")
    problems = catalogue.leaked_lines(lab, tmp_path, ["leaky", "clean"])
    assert len(problems) == 1 and problems[0].startswith("leaky:")


def test_a_batch_makes_the_attacks_asked_for_and_refuses_an_unknown_one(tmp_path):
    lab = "lab04_benchmarking"
    everything = catalogue.write_batch(lab, tmp_path / "all", ("attacks",))
    assert sorted(everything) == sorted(f"attack-{a}" for a in catalogue.attacks.ATTACKS)
    one = next(iter(catalogue.attacks.ATTACKS))
    assert list(catalogue.write_batch(lab, tmp_path / "one", ("attacks",), (one,))) == [f"attack-{one}"]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [f"attack-{one}.ipynb"]
    with pytest.raises(ValueError, match="unknown attacks"):
        catalogue.write_batch(lab, tmp_path / "bad", ("attacks",), ("no_such_attack",))
