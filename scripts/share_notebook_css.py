"""Move the stylesheet that every nbconvert HTML page in a folder embeds into one shared file.

`jupyter nbconvert --to html` inlines ~260 KB of JupyterLab CSS in each page; the GPU record keeps
eleven executed notebooks as HTML, so the same CSS would be committed eleven times. The leading run
of <style> blocks that all pages share becomes ``nbconvert.css`` beside them, and each page links it
where the blocks stood (the cascade order is unchanged).

The rest of nbconvert's head stays in every page on purpose: MathJax 2 reads its configuration only from an
inline ``<script type="text/x-mathjax-config">`` block, and the mermaid loader is an ES module, which Chromium
refuses to load from a separate file when the page is opened from disk (``file://``).

    python scripts/share_notebook_css.py results/gpu/<gpu>/notebooks

Run it again after `--keep` re-runs a notebook: only the new pages change.
"""
import pathlib
import re
import sys

STYLE = re.compile(r"<style\b[^>]*>(.*?)</style>\s*", re.S)
LINK = '<link rel="stylesheet" href="nbconvert.css">\n'


def leading_styles(page: str) -> list[re.Match]:
    """The first run of consecutive <style> blocks of a page."""
    run: list[re.Match] = []
    for m in STYLE.finditer(page):
        if run and m.start() != run[-1].end():
            break
        run.append(m)
    return run


def share(folder: pathlib.Path) -> int:
    """Link nbconvert.css from every page that still embeds it; returns how many pages changed. A folder already
    shared keeps its nbconvert.css, and a page added later (a notebook run again) must embed exactly that CSS."""
    pages = {p: p.read_text() for p in sorted(folder.glob("*.html"))}
    todo = {p: leading_styles(text) for p, text in pages.items() if LINK not in text}
    if not todo:
        raise SystemExit(f"{folder}: already shared (every page links nbconvert.css)")
    css = {"".join(m.group(1) for m in run) for run in todo.values()}
    shared = folder / "nbconvert.css"
    if shared.exists() and len(todo) < len(pages):
        css.add(shared.read_text())
    if len(css) != 1 or not css.pop().strip():
        raise SystemExit(f"{folder}: the pages do not share one leading stylesheet")
    first = next(iter(todo.values()))
    shared.write_text("".join(m.group(1) for m in first))
    for page, run in todo.items():
        text = pages[page]
        page.write_text(text[:run[0].start()] + LINK + text[run[-1].end():])
    return len(todo)


if __name__ == "__main__":
    print(f"{share(pathlib.Path(sys.argv[1]))} pages now link nbconvert.css")
