"""The fan-out benchmarks still run (quick mode) and report well-formed, plausible results.

No timing assertions: only that every frame expected was counted, the numbers exist and are
positive, and the target verdict is a bool.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not an installed package

from bench import fanout, filtered  # noqa: E402
from bench.harness import Result, Stat  # noqa: E402


def _check_common(result: Result) -> None:
    assert isinstance(result.ours, Stat) and isinstance(result.baseline, Stat)
    assert result.ours.n >= 2 and result.baseline.n >= 2
    for stat in (result.ours, result.baseline):
        assert 0 < stat.min <= stat.median <= stat.max and math.isfinite(stat.max)
    assert result.ratio is not None and result.ratio > 0
    assert result.target is not None
    assert isinstance(result.met, bool)
    assert result.met == result.target.met(result.ratio)
    assert result.notes and all(isinstance(n, str) for n in result.notes)
    assert result.to_json()["name"] == result.name


def test_fanout_quick() -> None:
    (result,) = fanout.run(quick=True)
    assert result.name == "fanout" and result.unit == "frames/s"
    _check_common(result)
    extra = result.extra
    for label in ("ours", "baseline"):
        assert extra[f"{label}_frames"] == extra[f"{label}_frames_expected"]
        assert all(n == result.params["clients"] * result.params["events_per_burst"]
                   for n in extra[f"{label}_frames"])  # fmt: skip
        assert extra[f"{label}_server_cpu_us_per_frame"] > 0
        p50, p99 = extra[f"{label}_latency_p50_ms"], extra[f"{label}_latency_p99_ms"]
        assert 0 < p50 <= p99 < 10_000
    assert any("server CPU/frame" in note for note in result.notes)


def test_filtered_quick() -> None:
    (result,) = filtered.run(quick=True)
    assert result.name == "filtered"
    _check_common(result)
    extra = result.extra
    for label in ("1k", "10k"):
        assert extra[f"frames_{label}"] == extra[f"frames_expected_{label}"]
        expected = result.params["events_per_burst"] * result.params["matching_per_event"]
        assert all(n == expected for n in extra[f"frames_{label}"])
        assert extra[f"fanout_us_per_change_{label}"] > 0
    small, large = result.params["subscriptions"]
    assert large == 10 * small
