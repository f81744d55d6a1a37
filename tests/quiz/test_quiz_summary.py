"""The `make run` report entry point."""

import time

from optcourse.quiz import summary


def test_summary_rows_all_pass_quickly(tmp_path):
    started = time.perf_counter()
    rows = summary(tmp_path)
    assert time.perf_counter() - started < 20
    assert len(rows) >= 8
    for row in rows:
        assert set(row) == {"item", "metric", "measured", "threshold", "passed"}
        assert row["item"] == "quiz"
        assert row["passed"] is True, row
    metrics = {row["metric"]: row["measured"] for row in rows}
    assert metrics["bank size (questions)"] >= 63
