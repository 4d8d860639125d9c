"""The store-requests, memory and latency benchmarks run (quick sizes) and give sane rows.

Timing and memory ratios are not asserted here (a loaded machine moves them); what is asserted
exactly is correctness: the store requests of every operation equal SPEC §3 on both stores, and
the default plugin negotiates no permessage-deflate and sends no compressed frame.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import latency, memory, store_requests  # noqa: E402
from bench.harness import Result, Stat, Target  # noqa: E402


def check_well_formed(results: list[Result]) -> None:
    assert results
    names = [r.name for r in results]
    assert len(names) == len(set(names)), names
    for r in results:
        assert isinstance(r, Result)
        assert r.name and r.unit
        for stat in (r.ours, r.baseline):
            assert isinstance(stat, Stat)
            assert stat.n >= 1
            assert stat.min <= stat.median <= stat.max
            assert all(math.isfinite(v) for v in (stat.min, stat.median, stat.max))
        assert r.ratio is not None and math.isfinite(r.ratio)
        if r.target is not None:
            assert isinstance(r.target, Target)
            assert isinstance(r.met, bool)
        r.to_json()  # serializable as bench/results.json needs it


SPEC_COSTS = {
    "insert": {"PUT": 1},
    "get": {"GET": 1},
    "update": {"GET": 1, "PUT": 1},
    "delete": {"GET": 1, "DELETE": 1},
    "list 100": {"LIST": 1, "GET": 100},
    "insert (partition)": {"PUT": 2},
    "get (partition)": {"GET": 1},
    "update (partition kept)": {"GET": 1, "PUT": 1},
    "update (partition moved)": {"GET": 1, "PUT": 2, "DELETE": 1},
    "delete (partition)": {"GET": 1, "DELETE": 2},
    "list 100 (partition)": {"LIST": 1, "GET": 100},
    "list 100 (partition of 250)": {"LIST": 1, "GET": 100},
}


@pytest.fixture(scope="module")
def store_results() -> list[Result]:
    return store_requests.run(quick=True)


def test_store_requests_match_spec_exactly(store_results):
    assert store_requests.expected_counts() == SPEC_COSTS
    results = store_results
    check_well_formed(results)
    by_store: dict[str, dict[str, Result]] = {}
    for r in results:
        by_store.setdefault(r.params["store"], {})[r.params["op"]] = r
    assert set(by_store) == {"memory", "seaweedfs"}
    for store, rows in by_store.items():
        assert set(rows) == set(SPEC_COSTS), store
        for op, r in rows.items():
            for run in r.extra["all_runs"]:
                assert run == SPEC_COSTS[op], (store, op, run)
            assert r.met is True and r.ratio == 1.0
            assert r.unit == "requests"


def test_memory_benchmark_quick():
    results = memory.run(quick=True)
    check_well_formed(results)
    (row,) = results
    assert row.unit == "KiB/conn"
    assert row.ours.median > 0 and row.baseline.median > 0
    assert row.target == Target("<=", 1.25)
    # The default plugin declines permessage-deflate (the clients offer it) and never compresses.
    assert row.extra["ours_deflate_negotiated"] == 0
    assert row.extra["ours_compressed_frames"] == 0


def test_latency_benchmark_quick():
    results = latency.run(quick=True)
    check_well_formed(results)
    p50, p99 = results
    assert p50.unit == p99.unit == "ms"
    assert p50.target == Target("<=", 2.0)
    assert 0 < p50.baseline.median <= p99.baseline.max
    assert 0 < p50.ours.median <= p99.ours.max
    assert p50.params["insert"].startswith("core")


@pytest.mark.parametrize("module", [store_requests, memory, latency])
def test_benchmarks_registered(module):
    from bench.__main__ import BENCHMARKS

    assert module.__name__.rpartition(".")[2] in BENCHMARKS
