"""The chaos campaign (`make chaos`) in miniature, so that `make test` keeps it working: a
kill from outside, live changes during a run, a crash point and an API fault burst, then a
clean run, with every table compared with the expected rows after each run that completes."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession

from tests.reliability import chaos

# A seed whose first four runs are one of each disturbance (the kinds come from the seed
# alone; what they hit varies with the crash points in the code and the timings).
SEED = 10


def test_a_short_campaign_loses_and_duplicates_nothing(spark: SparkSession, tmp_path: Path) -> None:
    results = tmp_path / "chaos-results.md"
    figures = chaos.run_campaign(
        ["--runs", "4", "--seed", str(SEED), "--profiles", "150", "--lists", "2",
         "--day-every", "2", "--results", str(results)]
    )  # fmt: skip

    assert sorted(figures.kinds) == ["crash", "fault", "kill", "live"]
    assert figures.runs == 5 and figures.days == 1
    assert figures.anomalies == []
    # At least the final clean run was checked, table by table, every expected row.
    assert figures.clean >= 1 and figures.comparisons >= 5 and figures.rows_checked > 150
    assert (figures.lost, figures.duplicated, figures.unexpected, figures.leaks) == (0, 0, 0, 0)
    assert figures.ok
    text = results.read_text(encoding="utf-8")
    assert "## Chaos campaign" in text
    assert "rows lost             0" in text and "rows duplicated       0" in text
