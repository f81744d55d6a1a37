"""Move the stylesheet that every nbconvert HTML page in a folder embeds into one shared file.

`jupyter nbconvert --to html` inlines ~260 KB of JupyterLab CSS in each page; the GPU record keeps
eleven executed notebooks as HTML, so the same CSS would be committed eleven times. The leading run
of <style> blocks that all pages share becomes ``nbconvert.css`` beside them, and each page links it
where the blocks stood (the cascade order is unchanged).

The rest of nbconvert's head stays in every page on purpose: MathJax 2 reads its configuration only from an
inline ``<script type="text/x-mathjax-config">`` block, and the mermaid loader is an ES module, which Chromium
refuses to load from a separate file when the page is opened from disk (``file://``).

    python scripts/share_notebook_css.py results/gpu/<gpu>/notebooks
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
    pages = {p: p.read_text() for p in sorted(folder.glob("*.html"))}
    if any(LINK in text for text in pages.values()):
        raise SystemExit(f"{folder}: already shared (a page links nbconvert.css)")
    runs = {p: leading_styles(text) for p, text in pages.items()}
    css = {"".join(m.group(1) for m in run) for run in runs.values()}
    if not pages or len(css) != 1 or not css.pop().strip():
        raise SystemExit(f"{folder}: the pages do not share one leading stylesheet")
    first = next(iter(runs.values()))
    (folder / "nbconvert.css").write_text("".join(m.group(1) for m in first))
    for page, run in runs.items():
        text = pages[page]
        page.write_text(text[:run[0].start()] + LINK + text[run[-1].end():])
    return len(pages)


if __name__ == "__main__":
    print(f"{share(pathlib.Path(sys.argv[1]))} pages now link nbconvert.css")
