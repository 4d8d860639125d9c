"""The request and core-vs-s3db.js benchmarks run and report well-formed rows (quick mode).

No timing is asserted: quick mode only checks that each benchmark still runs end to end and
computes what it reports. Quick ``core_vs_js`` measures our side only (no npm, no network).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not an installed package

from bench import core_vs_js, requests  # noqa: E402
from bench.harness import Result, Stat  # noqa: E402


def _positive(stat: Stat) -> None:
    assert isinstance(stat, Stat)
    assert stat.n >= 1
    assert all(math.isfinite(v) and v > 0 for v in (stat.median, stat.min, stat.max))
    assert stat.min <= stat.median <= stat.max


def _well_formed(result: Result) -> None:
    assert isinstance(result, Result)
    assert result.name and result.unit
    _positive(result.ours)
    json.dumps(result.to_json())  # what bench/results.json gets


@pytest.mark.timeout(120)
def test_requests_quick_reports_every_operation_and_connection_count():
    results = requests.run(quick=True)
    assert len(results) == len(requests.OPERATIONS) * len(requests.CONCURRENCY)
    seen = set()
    for r in results:
        _well_formed(r)
        seen.add((r.params["op"], r.params["connections"]))
        _positive(r.baseline)
        assert r.ratio == pytest.approx(r.ours.median / r.baseline.median)
        assert r.target is None and r.met is None  # the issue sets no target here
        assert r.extra["server_cpu_us_per_request"] > 0
        client = r.extra["product_client"]
        assert client["median"] > 0 and client["ratio"] > 0
        assert any("server" in note and "client" in note for note in r.notes)
    assert seen == {(op, c) for op in requests.OPERATIONS for c in requests.CONCURRENCY}


@pytest.mark.timeout(120)
def test_core_vs_js_quick_measures_our_side_and_says_the_js_side_was_skipped():
    results = core_vs_js.run(quick=True)
    assert [r.params["op"] for r in results] == [op for op, _, _ in core_vs_js.OPERATIONS]
    for r in results:
        _well_formed(r)
        assert r.target is not None and r.target.value == 2.0
        assert r.baseline is None and r.ratio is None and r.met is None
        assert not any("WORK MISMATCH" in note for note in r.notes)
    assert any("s3db.js not measured" in note for note in results[0].notes)


def test_core_vs_js_ratio_is_ours_over_s3db_js_per_operation():
    ours, theirs = Stat.of([40.0, 50.0, 60.0]), Stat.of([20.0, 25.0, 30.0])
    r = Result("core get vs s3db.js", {}, "gets/s", ours, theirs, target=core_vs_js.TARGET)
    assert r.ratio == pytest.approx(2.0) and r.met is True


def test_bottleneck_note_names_the_busier_side():
    assert requests.bottleneck_note(0.5, 0.95).startswith("client-bound")
    assert requests.bottleneck_note(0.97, 0.4).startswith("server-bound")
    assert requests.bottleneck_note(0.3, 0.3).startswith("latency-bound")
    assert requests.bottleneck_note(0.3, 0.3, others=0.6).startswith("CPU-starved")
