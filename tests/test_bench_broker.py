"""The broker history-cost benchmark runs (quick sizes) against a real Redis and gives a sane row."""

from __future__ import annotations

from bench import broker_memory


def test_broker_memory_benchmark_quick() -> None:
    (row,) = broker_memory.run(quick=True)
    assert row.unit == "bytes" and row.target is None and row.met is None
    assert row.params["changes"] == 200
    # Redis holds at least the payload it was given, and not absurdly more.
    assert row.baseline is not None and row.ours.median >= row.baseline.median
    assert row.ratio is not None and 1.0 <= row.ratio < 5.0
    assert row.extra["bytes_per_change"] == round(row.ours.median / 1000, 1)
