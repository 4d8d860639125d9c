"""The record cache on SeaweedFS: hot reads against the store's own speed, in the same run.

* hot ``get`` of a cached record vs a bare GET loop on the same storage client (target >= 20x),
  with the store requests the hot loop made (0);
* hot ``list(limit=100)`` answered from the id-set and the cached records vs the same listing
  without the cache (1 LIST + 100 GETs) (target >= 30x), with its requests (0);
* a write's propagation to another process's cache over Redis: from the moment the write is in
  the store and its change is handed to the broker (in ``update``) to the moment a second process (``harness.spawn``) sees the new
  version in its own cache (it polls its cache entry every 0.2 ms), p50/p99 (target p99 <= 5 ms);
* memory per cached record: what the cache allocated (``tracemalloc``, allocations with the
  cache's module on their stack) and still holds after N records of ~230 bytes of JSON were
  listed into it (entries and the id-set), divided by N, beside the bytes it accounts for its
  ``max_bytes`` bound.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
import uuid

from s3db_core import Database

from .harness import Result, Stat, Target, percentile, s3_server, spawn


async def _measure(quick: bool, url: str) -> list[Result]:
    rounds = 3 if quick else 5
    gets = 50 if quick else 400
    lists = 3 if quick else 20
    plain = Database(url)
    cached = Database(url, cache={"single_writer": True})
    await plain.connect()
    await cached.connect()
    try:
        schema = {"text": "string", "n": "number"}
        await plain.create_resource("docs", schema)
        res = await cached.create_resource("docs", schema)
        await asyncio.gather(*(res.insert({"text": "x" * 200, "n": i}) for i in range(100)))
        one = (await res.list(limit=1)).items[0]["id"]
        key = res._key(one)
        await res.list(limit=100)  # warm: builds the id-set

        async def rate(call, n: int) -> float:
            start = time.perf_counter()
            for _ in range(n):
                await call()
            return n / (time.perf_counter() - start)

        def bare_get():
            return plain.storage.get(key)

        def hot_get():
            return res.get(one)

        def uncached_list():
            return plain.resources["docs"].list(limit=100)

        def hot_list():
            return res.list(limit=100)

        base_get, ours_get, base_list, ours_list = [], [], [], []
        cached.storage.requests.reset()
        for _ in range(rounds):
            base_get.append(await rate(bare_get, gets))
            ours_get.append(await rate(hot_get, gets * 10))
            base_list.append(await rate(uncached_list, lists))
            ours_list.append(await rate(hot_list, lists * 10))
        requests = cached.storage.requests.snapshot()
    finally:
        await cached.disconnect()
        await plain.disconnect()
    return [
        Result("cache: hot get vs bare GET", {"store": "seaweedfs"}, "ops/s",
               Stat.of(ours_get), Stat.of(base_get), target=Target(">=", 20),
               extra={"hot_requests": requests}),  # fmt: skip
        Result("cache: hot list(100) vs uncached", {"store": "seaweedfs"}, "lists/s",
               Stat.of(ours_list), Stat.of(base_list), target=Target(">=", 30),
               extra={"hot_requests": requests}),  # fmt: skip
    ]


SCHEMA = {"text": "string", "n": "number"}


def _reader(conn, url: str, broker: str, id: str) -> None:
    """The other process: a cached Database on the same store and broker; reports, for each new
    version of ``id`` its cache holds, the wall-clock time it saw it."""

    async def main() -> None:
        db = Database(url, broker=broker, cache=True)
        await db.connect()
        try:
            res = await db.create_resource("prop", SCHEMA)
            await res.get(id)  # the record is cached: later versions come from the stream
            cache = db.cache
            assert cache is not None
            conn.send("ready")
            seen: list[tuple[int, float]] = []
            last = 0
            while not conn.poll(0):
                entry = cache.lookup_entry("prop", id)
                if entry is not None and entry.version > last and not entry.doubt:
                    last = entry.version
                    seen.append((last, time.time()))
                await asyncio.sleep(0.0002)
            conn.recv()
            conn.send(seen)
        finally:
            await db.disconnect()

    asyncio.run(main())


async def _propagation(quick: bool, url: str, broker: str) -> Result:
    writes = 50 if quick else 400
    db = Database(url, broker=broker, cache=True)
    await db.connect()
    try:
        res = await db.create_resource("prop", SCHEMA)
        id = (await res.insert({"text": "x" * 200, "n": 0}))["id"]
        with spawn(_reader, url, broker, id) as child:
            assert child.recv() == "ready"
            done: dict[int, float] = {}
            publish = db._publish

            async def timed(change):  # the write is in the store: its change goes out now
                done[change.version] = time.time()
                await publish(change)

            db._publish = timed  # type: ignore[method-assign]
            for n in range(1, writes + 1):
                await res.update(id, {"n": n})
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)
            child.send("stop")
            seen = child.recv()
    finally:
        await db.disconnect()
    delays = [(at - done[v]) * 1000 for v, at in seen if v in done]
    if len(delays) < writes * 0.9:
        raise RuntimeError(f"the other cache saw {len(delays)} of {writes} writes")
    p50, p99 = percentile(delays, 50), percentile(delays, 99)
    return Result("cache: write propagation to another process (redis)",
                  {"store": "seaweedfs", "broker": "redis", "writes": writes}, "ms",
                  Stat.of(delays), None, ratio=p99, ratio_of="p99 (ms)", target=Target("<=", 5),
                  extra={"p50_ms": round(p50, 3), "p99_ms": round(p99, 3),
                         "seen": len(delays)})  # fmt: skip


async def _memory(quick: bool, url: str) -> Result:
    count = 200 if quick else 2000
    plain = Database(url)
    cached = Database(url, cache={"single_writer": True})
    await plain.connect()
    await cached.connect()
    try:
        writer = await plain.create_resource("mem", SCHEMA)
        for start in range(0, count, 100):
            await asyncio.gather(*(writer.insert({"text": "x" * 200, "n": i})
                                   for i in range(start, min(start + 100, count))))  # fmt: skip
        res = await cached.create_resource("mem", SCHEMA)
        cache = cached.cache
        assert cache is not None
        gc.collect()
        tracemalloc.start(2)
        try:
            records = await res.query()
            assert len(records) == count
            del records
            gc.collect()
            held = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(True, "*s3db_core/cache.py", all_frames=True)]
            )
        finally:
            tracemalloc.stop()
        total = sum(stat.size for stat in held.statistics("filename"))
        accounted = (cache.bytes + cache.id_bytes) / count
    finally:
        await cached.disconnect()
        await plain.disconnect()
    per = total / count
    return Result("cache: memory per cached record", {"records": count, "json_bytes": "~230"},
                  "bytes/record", Stat.of([per]), None,
                  extra={"accounted_bytes_per_record": round(accounted, 1)})  # fmt: skip


def run(quick: bool = False) -> list[Result]:
    from .scaleout import services

    with s3_server() as server:
        results = asyncio.run(_measure(quick, server.url(f"bench-cache-{uuid.uuid4().hex[:8]}")))
        with services() as urls:
            broker = f"{urls['redis']}?prefix=cache{uuid.uuid4().hex[:8]}"
            url = server.url(f"bench-cache-{uuid.uuid4().hex[:8]}")
            results.append(asyncio.run(_propagation(quick, url, broker)))
        results.append(asyncio.run(_memory(quick, server.url(f"bench-cache-{uuid.uuid4().hex[:8]}"))))
        return results
