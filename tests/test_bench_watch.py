"""The ``s3db watch`` benchmark runs (quick sizes) and gives sane rows: every foreign write
reached the subscriber, and through the watcher it took longer than its grace."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import watch  # noqa: E402
from bench.__main__ import BENCHMARKS  # noqa: E402


def test_watch_benchmark_runs_and_every_write_arrives() -> None:
    assert "watch" in BENCHMARKS
    rows = watch.run(quick=True)
    assert len(rows) == 4 and len({r.name for r in rows}) == 4
    for row in rows:
        assert row.unit == "ms"
        assert row.extra["delivered"] == row.extra["of"] == row.extra["baseline_delivered"]
        assert row.ours.median >= row.params["grace_s"] * 1000
        assert 0 < row.baseline.median < row.ours.median
