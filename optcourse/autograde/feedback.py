"""Per-student HTML feedback, written by the trusted parent from validated results.

It shows the student's own answer cells, each graded test's points and the reason it failed (the
assertion message, scrubbed), and the performance checks' measured numbers. It never contains a
test cell's source, a traceback, or a line of a hidden test (``render`` checks that last, too).
"""
from __future__ import annotations

import html
import re
import unicodedata

# ECMA-48 escape sequences (7-bit and 8-bit forms): control strings (OSC, DCS, SOS, PM, APC) up to their
# terminator (or the end of the text), CSI sequences, then any other ESC sequence
_ESCAPES = re.compile(
    r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c|$)"
    r"|(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|\x1b[ -/]*[0-~]?", re.S)
# what separates lines, for text that must stay on one line (a table cell, a CSV field)
_BREAKS = re.compile(r"[\r\n\t\v\f\x85\u2028\u2029]+")


def plain(text, newlines: bool = False) -> str:
    """``text`` with every escape sequence and every C0/C1 control character (and Unicode format
    characters: bidi overrides, zero-width spaces) removed, so that nothing a submission wrote can move a
    terminal's cursor, recolour it, rewrite a line (a carriage return) or hide text. ``newlines``: keep
    ``\\n`` and tabs (code, multi-line notes); otherwise every line break becomes a space (a table cell)."""
    text = _ESCAPES.sub("", str(text if text is not None else ""))
    if newlines:
        text = text.replace("\r\n", "\n")
    else:
        text = _BREAKS.sub(" ", text)
    keep = "\n\t" if newlines else ""
    return "".join(ch for ch in text if ch in keep or unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp", "Cs"))


def csv_field(value) -> str:
    """A CSV field: plain text on one line, and never read as a formula by a spreadsheet (a leading ``'``)."""
    text = plain(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def clean_result(res) -> None:
    """Make every string of a ``StudentResult`` plain, in place: what the gradebook, the CSVs, the summaries
    and the feedback show (the student's code keeps its line breaks)."""
    res.student, res.status = plain(res.student), plain(res.status)
    res.notes = [plain(n) for n in res.notes]
    res.code = [plain(c, newlines=True) for c in res.code]
    for cell in res.cells.values():
        cell.reason, cell.note = plain(cell.reason), plain(cell.note)
    for p in res.perf:
        p.name, p.reason = plain(p.name), plain(p.reason)
        p.measured = {plain(k): (plain(v) if isinstance(v, str) else v) for k, v in p.measured.items()}


def render(lab: str, res, hidden: list[str]) -> str:
    def e(text) -> str:
        return html.escape(plain(text))

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
    code = "".join(f"<pre>{html.escape(plain(c, newlines=True))}</pre>" for c in res.code)
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
