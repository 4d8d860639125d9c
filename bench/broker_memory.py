"""Broker history cost (second-wave row d): memory in Redis per 1,000 retained changes.

A real ``redis-server`` (``tests/services.py``) is started for the run. Changes shaped like the
chat example's messages (an insert with a ~120-character text) are published through the Redis
broker into one resource's stream, with ``history_size`` large enough to keep them all, and Redis
is asked what the stream and its meta hash take (``MEMORY USAGE ... SAMPLES 0``: every entry
counted). The baseline is the encoded changes' own bytes, so the ratio is Redis's overhead over
the payload. Reported, no target.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

from s3db_core import Change
from s3db_core.brokers.base import encode_change
from s3db_core.brokers.redis import RedisBroker

from .harness import Result, Stat

PER = 1000


def _services() -> Any:
    module = sys.modules.get("services")
    if module is None:
        path = Path(__file__).resolve().parent.parent / "tests" / "services.py"
        spec = importlib.util.spec_from_file_location("services", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["services"] = module
        spec.loader.exec_module(module)
    return module


def message(i: int) -> Change:
    record = {
        "id": f"msg{i:019d}",
        "roomId": "general",
        "userId": "user-42",
        "text": ("hello from the benchmark, " * 5)[:120],
        "createdAt": "2026-01-01T00:00:00.000Z",
    }
    return Change("chat_messages", "insert", record, None, int(time.time() * 1000), 1)


async def measure(url: str, count: int, round_: int) -> tuple[float, float]:
    """Bytes Redis holds for ``count`` retained changes and the changes' own encoded bytes."""
    broker = RedisBroker(f"{url}?prefix=bench{round_}&history_size={count}")
    await broker.start()
    try:
        payload = 0
        for i in range(count):
            change = message(i)
            payload += len(encode_change(change))
            await broker.publish(change)
        return float(await broker.memory_usage("chat_messages")), float(payload)
    finally:
        await broker.close()


def run(quick: bool) -> list[Result]:
    count = 200 if quick else 2000
    rounds = 1 if quick else 3
    service = _services().start_redis()
    try:
        samples = [asyncio.run(measure(service.url, count, r)) for r in range(rounds)]
    finally:
        service.stop()
    scale = PER / count
    ours = Stat.of(used * scale for used, _ in samples)
    baseline = Stat.of(payload * scale for _, payload in samples)
    return [
        Result(
            name="broker: Redis memory per 1,000 retained changes",
            params={"changes": count, "record_bytes": int(baseline.median / PER)},
            unit="bytes",
            ours=ours,
            baseline=baseline,
            ratio_of="Redis bytes / encoded change bytes",
            extra={"bytes_per_change": round(ours.median / PER, 1)},
            notes=["stream + meta hash, MEMORY USAGE SAMPLES 0; reported, no target"],
        )
    ]
