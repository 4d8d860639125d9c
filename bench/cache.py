"""The record cache on SeaweedFS: hot reads against the store's own speed, in the same run.

* hot ``get`` of a cached record vs a bare GET loop on the same storage client (target >= 20x),
  with the store requests the hot loop made (0);
* hot ``list(limit=100)`` answered from the id-set and the cached records vs the same listing
  without the cache (1 LIST + 100 GETs) (target >= 30x), with its requests (0).
"""

from __future__ import annotations

import asyncio
import time
import uuid

from s3db_core import Database

from .harness import Result, Stat, Target, s3_server


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


def run(quick: bool = False) -> list[Result]:
    with s3_server() as server:
        return asyncio.run(_measure(quick, server.url(f"bench-cache-{uuid.uuid4().hex[:8]}")))
