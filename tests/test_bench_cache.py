"""The record-cache benchmark runs (quick mode) on SeaweedFS and Redis and gives its rows: hot
get and hot list with no store request, a write's propagation to another process's cache, and
the memory a cached record takes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not an installed package

from bench import cache  # noqa: E402


@pytest.mark.timeout(300)
def test_cache_bench_quick_reports_hot_reads_propagation_and_memory():
    results = {r.name: r for r in cache.run(quick=True)}
    assert set(results) == {
        "cache: hot get vs bare GET",
        "cache: hot list(100) vs uncached",
        "cache: write propagation to another process (redis)",
        "cache: memory per cached record",
    }
    hot = results["cache: hot get vs bare GET"]
    assert hot.extra["hot_requests"] == {}
    prop = results["cache: write propagation to another process (redis)"]
    assert prop.unit == "ms" and prop.extra["seen"] >= 45
    assert 0 <= prop.extra["p50_ms"] <= prop.extra["p99_ms"] < 1000
    memory = results["cache: memory per cached record"]
    assert memory.ours.median > 200 and memory.extra["accounted_bytes_per_record"] > 200
    for r in results.values():
        json.dumps(r.to_json())
