"""The channel benchmark rows still run (quick mode) and report well-formed, plausible results:
fan-out to a channel's members against a bare broadcast, cross-process latency on Redis and NATS,
store requests for a typing burst, and presence per member. No timing assertions."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not an installed package

from bench import channel_fanout, channel_latency, channel_presence, channel_store  # noqa: E402


def test_channel_fanout_quick() -> None:
    (row,) = channel_fanout.run(quick=True)
    assert row.unit == "frames/s" and row.params["members"] == 50
    assert row.baseline is not None and row.ours.min > 0 and row.baseline.min > 0
    assert row.ratio is not None and row.ratio > 0 and isinstance(row.met, bool)
    assert not [n for n in row.notes if "fewer frames" in n], row.notes


def test_channel_latency_quick() -> None:
    rows = channel_latency.run(quick=True)
    assert [r.name.split(" via ")[1].split(",")[0] for r in rows] == ["redis"] * 2 + ["nats"] * 2
    for row in rows:
        assert row.unit == "ms" and row.ratio is not None and math.isfinite(row.ratio)
        assert row.ours.median > 0 and row.baseline is not None and row.baseline.median > 0
        assert row.extra["history_cross_p50_ms"] > 0


def test_channel_store_quick() -> None:
    (row,) = channel_store.run(quick=True)
    assert row.ours.median == 0 and row.met is True
    assert row.extra["channel_by_kind"] == {}
    records = row.extra["records_by_kind"]
    assert records["PUT"] == 10 and records["DELETE"] == 10 and records["LIST"] >= 1


def test_channel_presence_quick() -> None:
    time_row, memory_row = channel_presence.run(quick=True)
    assert time_row.unit == "ms" and time_row.ours.median >= 0
    assert memory_row.unit == "bytes" and memory_row.params["members"] == 200
