"""The core's write path on ``memory://``: what insert, update and delete cost in CPU.

Each operation runs in a loop on one resource (four fields; a second resource adds a partition
on ``roomId``), and reports CPU microseconds per call, the median of several repetitions. The
baseline is the store alone: a bare ``storage.put`` of an already encoded record of the same
size, so the ratio is what validation, encoding, the checks (limits, versions, write tokens,
partition references, the per-record lock) and the change announcement add on top of the store.

Two databases are measured: one with nothing listening to changes, and one with a plugin whose
``s3db_change`` hook receives every change (what a server with the WebSocket plugin pays before
any fan-out). No target: the rows track the write path's own cost from one change to the next.

``python -m bench.write_path`` prints the rows alone (it imports ``s3db_core`` from the path,
so the same script measures two trees one after the other).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

from s3db_core import hookimpl

from .harness import Result, Stat, table

ATTRIBUTES = {
    "roomId": "string|required",
    "title": "string|required",
    "author": "string|required",
    "score": "number",
}
PARTITIONS = {"byRoom": {"fields": {"roomId": "string"}}}
OPERATIONS = ("insert", "insert_partitioned", "update", "update_moving", "delete")


def config(quick: bool) -> dict[str, int]:
    if quick:
        return {"calls": 200, "reps": 2}
    return {"calls": 3000, "reps": 7}


def record(i: int) -> dict[str, Any]:
    return {"roomId": f"room-{i % 26:03d}", "title": f"message number {i}", "author": f"a{i % 7}", "score": i}


class _Listener:
    """A plugin receiving every change, doing nothing with it."""

    def __init__(self) -> None:
        self.changes = 0

    @hookimpl
    def s3db_change(self, change: Any) -> None:
        self.changes += 1


async def _loop(calls: int, op: Callable[[int], Awaitable[Any]]) -> float:
    """CPU microseconds per call of ``op(i)`` over ``calls`` calls (the collector paused).

    CPU time of this process, not wall time: on a shared machine the wall clock also counts
    the time other processes held the core."""
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        for i in range(calls):
            await op(i)
        return (time.process_time() - start) / calls * 1e6
    finally:
        gc.enable()


async def _repetition(rep: int, plain: Any, parted: Any, put: Any, calls: int) -> dict[str, float]:
    """One pass over every operation: {name: us per call}."""
    ids: list[str] = []
    moved: list[str] = []

    async def insert(i: int) -> None:
        ids.append((await plain.insert(record(i)))["id"])

    async def insert_partitioned(i: int) -> None:
        moved.append((await parted.insert(record(i)))["id"])

    async def update(i: int) -> None:
        await plain.update(ids[i], {"score": -i})

    async def update_moving(i: int) -> None:  # the partition value changes: references move
        await parted.update(moved[i], {"roomId": f"room-{(i + 1) % 26:03d}"})

    async def delete(i: int) -> None:
        await plain.delete(ids[i])

    async def bare_put(i: int) -> None:
        await put(f"bare/{rep}/{i}")

    ops = {"insert": insert, "insert_partitioned": insert_partitioned, "update": update,
           "update_moving": update_moving, "delete": delete, "bare_put": bare_put}  # fmt: skip
    return {name: await _loop(calls, op) for name, op in ops.items()}


async def measure(cfg: dict[str, int], listening: bool) -> dict[str, list[float]]:
    """{operation: [us per call, one per repetition], "bare_put": [...]}."""
    from s3db_core import Database
    from s3db_core.encoding import encode_record

    db = Database(f"memory://write-path-{time.monotonic_ns()}/p")
    await db.connect()
    if listening:
        await db.use_plugin(_Listener())
    plain = await db.create_resource("plain", ATTRIBUTES)
    parted = await db.create_resource("parted", ATTRIBUTES, partitions=PARTITIONS)
    metadata, body = encode_record(record(0), system={"sr": "1"})
    storage = db.storage

    async def put(key: str) -> None:
        await storage.put(key, body, metadata, if_none_match=True)

    out: dict[str, list[float]] = {name: [] for name in (*OPERATIONS, "bare_put")}
    for rep in range(cfg["reps"] + 1):  # the first repetition warms up and is dropped
        measured = await _repetition(rep, plain, parted, put, cfg["calls"])
        if rep:
            for name, micros in measured.items():
                out[name].append(micros)
    await db.disconnect()
    return out


def run(quick: bool = False) -> list[Result]:
    cfg = config(quick)
    results = []
    for listening in (False, True):
        measured = asyncio.run(measure(cfg, listening))
        baseline = Stat.of(measured["bare_put"])
        for name in OPERATIONS:
            results.append(
                Result(
                    name=f"core write path: {name}" + (" (a change listener)" if listening else ""),
                    params={"op": name, "listener": listening, "calls": cfg["calls"], "store": "memory"},
                    unit="us/call",
                    ours=Stat.of(measured[name]),
                    baseline=baseline,
                    ratio_of="ours / bare storage.put",
                )
            )
    return results


if __name__ == "__main__":
    import sys

    print(table(run(quick="--quick" in sys.argv)))
