"""Item analysis for instructors: difficulty and discrimination of every question.

difficulty       mean fraction of the points earned (1.0 = everyone right)
discrimination   point-biserial correlation between the item's score and the rest
                 score (the student's percent on the other questions of the quiz), so the
                 item does not correlate with itself. Negative: the students who do well
                 elsewhere miss it more often than the others, a sign of a wrong key or an
                 ambiguous question.
"""

from __future__ import annotations

import csv
import html
import math
from dataclasses import dataclass
from pathlib import Path

from .grade import FileResult

WEAK_DISCRIMINATION = 0.2  # common rule of thumb: items below it separate students poorly
FLAG_STRONG_MISS = "strong students miss it"
FLAG_WEAK = "weak discrimination"


@dataclass
class ItemStats:
    id: str
    lecture: int
    responses: int
    difficulty: float
    discrimination: float | None  # None when the item or the rest scores do not vary

    @property
    def flag(self) -> str:
        if self.discrimination is None:
            return ""
        if self.discrimination < 0:
            return FLAG_STRONG_MISS
        return FLAG_WEAK if self.discrimination < WEAK_DISCRIMINATION else ""


def pearson(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    var_x = sum((x - mean_x) ** 2 for x in xs)
    var_y = sum((y - mean_y) ** 2 for y in ys)
    if var_x == 0 or var_y == 0:
        return None
    return cov / math.sqrt(var_x * var_y)


def item_analysis(results: list[FileResult]) -> list[ItemStats]:
    """Statistics per question id over the gradable responses (questions drawn per student are pooled)."""
    item_scores: dict[str, list[float]] = {}
    rest_scores: dict[str, list[float]] = {}
    lectures: dict[str, int] = {}
    for result in results:
        if not result.gradable:
            continue
        for question in result.questions:
            rest_points = result.max_score - question.points
            rest = 100 * (result.score - question.earned) / rest_points if rest_points else 0.0
            item_scores.setdefault(question.id, []).append(question.earned / question.points)
            rest_scores.setdefault(question.id, []).append(rest)
            lectures[question.id] = question.lecture
    stats = []
    for question_id in sorted(item_scores, key=lambda qid: (lectures[qid], qid)):
        scores = item_scores[question_id]
        discrimination = pearson(scores, rest_scores[question_id]) if len(scores) > 1 else None
        stats.append(ItemStats(question_id, lectures[question_id], len(scores), sum(scores) / len(scores),
                               discrimination))
    return stats


def write_item_analysis_csv(stats: list[ItemStats], path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "lecture", "responses", "difficulty", "discrimination", "flag"])
        for item in stats:
            writer.writerow([item.id, item.lecture, item.responses, round(item.difficulty, 4),
                             "" if item.discrimination is None else round(item.discrimination, 4), item.flag])
    return path


# --- HTML summary with an inline SVG plot (no plotting library needed) ----------------

PLOT_WIDTH, PLOT_HEIGHT, MARGIN = 560, 320, 48


def _plot_svg(stats: list[ItemStats]) -> str:
    inner_w, inner_h = PLOT_WIDTH - 2 * MARGIN, PLOT_HEIGHT - 2 * MARGIN

    def x_of(difficulty: float) -> float:
        return MARGIN + difficulty * inner_w

    def y_of(discrimination: float) -> float:  # axis from -1 (bottom) to 1 (top)
        return MARGIN + (1 - discrimination) / 2 * inner_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" '
             'role="img" aria-label="item difficulty versus discrimination">',
             f'<rect x="{MARGIN}" y="{MARGIN}" width="{inner_w}" height="{inner_h}" fill="none" stroke="#999"/>',
             f'<line x1="{MARGIN}" x2="{MARGIN + inner_w}" y1="{y_of(0):.1f}" y2="{y_of(0):.1f}" stroke="#c33" '
             'stroke-dasharray="4 3"/>',
             f'<line x1="{MARGIN}" x2="{MARGIN + inner_w}" y1="{y_of(WEAK_DISCRIMINATION):.1f}" '
             f'y2="{y_of(WEAK_DISCRIMINATION):.1f}" stroke="#e90" stroke-dasharray="2 3"/>',
             f'<text x="{PLOT_WIDTH / 2}" y="{PLOT_HEIGHT - 10}" text-anchor="middle" font-size="12">'
             'difficulty (fraction of points earned)</text>',
             f'<text x="14" y="{PLOT_HEIGHT / 2}" text-anchor="middle" font-size="12" '
             f'transform="rotate(-90 14 {PLOT_HEIGHT / 2})">discrimination (point-biserial)</text>']
    for tick in (0, 0.5, 1):
        parts.append(f'<text x="{x_of(tick):.1f}" y="{MARGIN + inner_h + 16}" text-anchor="middle" '
                     f'font-size="10">{tick:g}</text>')
    for tick in (-1, 0, 1):
        parts.append(f'<text x="{MARGIN - 6}" y="{y_of(tick) + 4:.1f}" text-anchor="end" font-size="10">{tick:g}</text>')
    for item in stats:
        if item.discrimination is None:
            continue
        color = {"": "#36c", FLAG_WEAK: "#e90", FLAG_STRONG_MISS: "#c33"}[item.flag]
        parts.append(f'<circle cx="{x_of(item.difficulty):.1f}" cy="{y_of(item.discrimination):.1f}" r="4" '
                     f'fill="{color}"><title>{html.escape(item.id)}: difficulty {item.difficulty:.2f}, '
                     f'discrimination {item.discrimination:.2f}</title></circle>')
        if item.flag == FLAG_STRONG_MISS:
            parts.append(f'<text x="{x_of(item.difficulty) + 6:.1f}" y="{y_of(item.discrimination) + 4:.1f}" '
                         f'font-size="10" fill="#c33">{html.escape(item.id)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def render_summary_html(results: list[FileResult], stats: list[ItemStats]) -> str:
    graded = [r for r in results if r.gradable]
    percents = [100 * r.score / r.max_score for r in graded if r.max_score]
    mean = f"{sum(percents) / len(percents):.1f}%" if percents else "n/a"
    flagged = [item for item in stats if item.flag == FLAG_STRONG_MISS]
    rows = "\n".join(
        f"<tr><td>{html.escape(item.id)}</td><td>{item.lecture}</td><td>{item.responses}</td>"
        f"<td>{item.difficulty:.2f}</td><td>{'' if item.discrimination is None else f'{item.discrimination:.2f}'}"
        f"</td><td>{html.escape(item.flag)}</td></tr>" for item in stats)
    flagged_list = "".join(f"<li>{html.escape(item.id)} (discrimination {item.discrimination:.2f})</li>"
                           for item in flagged) or "<li>none</li>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Quiz grading summary</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto}}td,th{{padding:2px 8px;text-align:left}}</style>
</head><body>
<h1>Quiz grading summary</h1>
<p>{len(results)} response file(s), {len(graded)} graded; mean score {mean}.</p>
<h2>Item analysis</h2>
<p>Difficulty is the mean fraction of the points earned; discrimination is the point-biserial correlation of
the item with the rest of the quiz. Red: strong students miss the item (check its key and wording); orange:
below {WEAK_DISCRIMINATION:g}.</p>
{_plot_svg(stats)}
<h3>Items strong students miss</h3>
<ul>{flagged_list}</ul>
<table><tr><th>id</th><th>lecture</th><th>responses</th><th>difficulty</th><th>discrimination</th><th>flag</th></tr>
{rows}
</table>
</body></html>
"""


def write_item_analysis(results: list[FileResult], out_dir) -> dict[str, Path]:
    """Write item_analysis.csv and summary.html (with the plot) to out_dir."""
    out_dir = Path(out_dir)
    stats = item_analysis(results)
    paths = {"csv": write_item_analysis_csv(stats, out_dir / "item_analysis.csv"),
             "html": out_dir / "summary.html"}
    paths["html"].write_text(render_summary_html(results, stats), encoding="utf-8")
    return paths
