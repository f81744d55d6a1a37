"""Per-student HTML feedback, written by the trusted parent from validated results.

It shows the student's own answer cells, each graded test's points and the reason it failed (the
assertion message, scrubbed), and the performance checks' measured numbers. It never contains a
test cell's source, a traceback, or a line of a hidden test (``render`` checks that last, too).
"""
from __future__ import annotations

import html


def render(lab: str, res, hidden: list[str]) -> str:
    e = html.escape
    rows = []
    for gid, cell in res.cells.items():
        score = "manual" if cell.score is None else f"{cell.score:g}"
        css = "ok" if cell.reason == "passed" else ("manual" if cell.score is None else "bad")
        rows.append(f'<tr class="{css}"><td>{e(gid)}</td><td>{score} / {cell.max_score:g}</td><td>{e(cell.reason)}{"<br><small>" + e(cell.note) + "</small>" if cell.note else ""}</td></tr>')
    for p in res.perf:
        css = "ok" if p.passed else "bad"
        rows.append(f'<tr class="{css}"><td>performance: {e(p.name)}</td><td>{p.score:g} / {p.max_score:g}</td>'
                    f'<td>{e(p.reason)}</td></tr>')
    notes = "".join(f"<li>{e(n)}</li>" for n in res.notes)
    code = "".join(f"<pre>{e(c)}</pre>" for c in res.code)
    body = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{e(lab)} feedback for {e(res.student)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}} td,th{{padding:.3em .6em;border-bottom:1px solid #ddd}}
tr.ok td:last-child{{color:#176217}} tr.bad td:last-child{{color:#a11}} pre{{background:#f6f6f6;padding:.5em}}</style></head>
<body><h1>{e(lab)}: {e(res.student)}</h1>
<p><b>Score: {res.score:g} / {res.max_score:g}</b> (status: {e(res.status)})</p>
{f"<ul>{notes}</ul>" if notes else ""}
<table><tr><th>check</th><th>points</th><th>result</th></tr>{''.join(rows)}</table>
<h2>Your answers</h2>{code or "<p>(none)</p>"}
<p><small>Hidden tests are not shown. Performance was measured by the grader on its own machine against the
reference in the same run; numbers printed by the notebook do not count.</small></p>
</body></html>
"""
    for line in hidden:  # last line of defence: a hidden test line never leaves the grader
        if line in body and not any(line in c for c in res.code):
            body = body.replace(e(line), "(hidden)").replace(line, "(hidden)")
    return body
