"""optcourse.measure.report: Markdown + self-contained HTML report whose tables read back exactly."""
import json

import pytest

from optcourse.measure import report


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.bar(["a", "b"], [1, 2])
    return fig


def test_report_round_trips_tables_and_embeds_figures(tmp_path):
    rows = [{"variant": "fp32", "p90_ms": 1.23456, "speedup": 1.0, "n": 20},
            {"variant": "int8 | qdq", "p90_ms": 0.5, "speedup": 2.469, "n": 20}]
    rep = report.Report("Bench", "subtitle")
    rep.add_heading("Results").add_text("Measured with `compare`, **alternating** rounds.")
    rep.add_table("techniques", rows, caption="per technique")
    rep.add_metrics("summary", {"best": "int8", "max_qps": 123.4})
    rep.add_figure("latency", _figure(), caption="latency per technique")
    rep.add_system({"cpu_count": 2})
    paths = rep.write(tmp_path / "out")
    md = paths["md"].read_text()
    tables = report.read_markdown_tables(md)
    assert tables["techniques"][0] == {"variant": "fp32", "p90_ms": 1.235, "speedup": 1.0, "n": 20}
    assert tables["techniques"][1]["variant"] == "int8 | qdq"
    assert tables["summary"] == [{"metric": "best", "value": "int8"}, {"metric": "max_qps", "value": 123.4}]
    assert "![latency per technique](report_files/latency.png)" in md
    assert (tmp_path / "out" / "report_files" / "latency.png").read_bytes().startswith(b"\x89PNG")
    page = paths["html"].read_text()
    assert report.html_embedded_images(page) == 1 and "<table data-name='techniques'>" in page
    assert "<code>compare</code>" in page and "<b>alternating</b>" in page
    data = json.loads(paths["json"].read_text())
    assert data["tables"]["techniques"]["rows"][0]["p90_ms"] == 1.23456 and data["figures"] == ["latency"]


def test_format_value():
    assert report.format_value(1234.5678) == "1235"
    assert report.format_value(0.000012345) == "1.234e-05"
    assert report.format_value(3) == "3" and report.format_value(None) == "—" and report.format_value(True) == "True"
    import numpy as np

    assert report.format_value(np.float32(2.5)) == "2.5"


def test_bad_names_and_duplicates_are_rejected():
    rep = report.Report("x")
    rep.add_table("t", [{"a": 1}])
    with pytest.raises(ValueError):
        rep.add_table("t", [{"a": 1}])
    with pytest.raises(ValueError):
        rep.add_table("bad name", [{"a": 1}])
    with pytest.raises(ValueError):
        rep.add_figure("f", b"not a png")


def test_read_markdown_tables_ignores_unmarked_tables():
    md = "| a |\n|---|\n| 1 |\n\nTable `x`: cap\n\n| a | b |\n|---|---|\n| 1 | — |\n"
    assert report.read_markdown_tables(md) == {"x": [{"a": 1, "b": None}]}


def test_markdown_sections_split_on_headings(tmp_path):
    rep = report.Report("Title")
    rep.add_heading("Method")
    rep.add_text("One thread, alternating rounds.")
    rep.add_heading("Details", level=3)
    rep.add_text("inside Method")
    rep.add_heading("Results")
    rep.add_table("t", [{"a": 1}])
    rep.add_system({"python": "3.11", "note": "# not a heading"})
    sections = report.markdown_sections(rep.to_markdown())
    assert "One thread" in sections["Method"] and "inside Method" in sections["Method"]
    assert sections["Details"] == "inside Method"
    assert "Table `t`" in sections["Results"] and "inside Method" not in sections["Results"]
    assert '"python": "3.11"' in sections["System"]
    assert "not a heading" not in sections  # a '#' line inside a code block is not a heading
    assert set(sections) == {"Title", "Method", "Details", "Results", "System"}
