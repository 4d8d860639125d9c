"""Store requests per operation (SPEC §3), read from the storage client's own counters.

Every core operation is run several times on a resource without partitions and on one with a
``byRoom`` partition, and the requests its storage client counted (by kind: PUT, GET, HEAD,
LIST, DELETE) are compared with what SPEC §3 says the operation costs:

    insert = 1 PUT (+1 per partition)          get = 1 GET
    update = 1 GET + 1 PUT (+partition moves)  delete = 1 GET + 1 DELETE (+partition refs)
    list of n = ceil(n/1000) LIST + n GET

The partitioned listings read one partition holding exactly the page size and one holding more
(where reading only the page's records is what SPEC §3's "n GET" asks of the listing).

Each row's ``ours`` is the measured total, ``baseline`` the SPEC's total, and ``met`` means the
counts are equal kind by kind (not just in total); ``extra`` holds both breakdowns. It runs on
``memory://`` and, while a SeaweedFS server is up, on the real S3 client too: the numbers must
be the same on both (retries inside botocore are not requests of ours: one call, one count).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import Any

from s3db_core import Database

from .harness import Result, Stat, Target, s3_server

LIST_N = 100
ROOM = "r1"  # holds exactly LIST_N records
BIG_ROOM = "big"  # holds BIG_N records: a listing must still read only the page
BIG_N = 250

# (name, partitioned, expected requests by kind) in the order they run.
Expected = dict[str, int]


def expected_counts() -> dict[str, Expected]:
    """SPEC §3's cost of each measured operation."""
    list_n = {"LIST": math.ceil(LIST_N / 1000), "GET": LIST_N}
    return {
        "insert": {"PUT": 1},
        "get": {"GET": 1},
        "update": {"GET": 1, "PUT": 1},
        "delete": {"GET": 1, "DELETE": 1},
        f"list {LIST_N}": list_n,
        "insert (partition)": {"PUT": 2},
        "get (partition)": {"GET": 1},
        "update (partition kept)": {"GET": 1, "PUT": 1},
        "update (partition moved)": {"GET": 1, "PUT": 2, "DELETE": 1},
        "delete (partition)": {"GET": 1, "DELETE": 2},
        f"list {LIST_N} (partition)": list_n,
        f"list {LIST_N} (partition of {BIG_N})": list_n,
    }


ATTRIBUTES = {"roomId": "string|required", "content": "string|required", "n": "number|optional"}


async def _fill(resource: Any, records: list[dict[str, Any]]) -> list[str]:
    sem = asyncio.Semaphore(32)

    async def one(data: dict[str, Any]) -> str:
        async with sem:
            return (await resource.insert(data))["id"]

    return list(await asyncio.gather(*(one(d) for d in records)))


async def _measure(url: str, reps: int) -> dict[str, list[dict[str, int]]]:
    """Run every operation ``reps`` times on a fresh database at ``url``; counts per run."""
    db = Database(url)
    await db.connect()
    try:
        plain = await db.create_resource("plain", ATTRIBUTES, timestamps=True)
        parted = await db.create_resource(
            "parted",
            ATTRIBUTES,
            timestamps=True,
            partitions={"byRoom": {"fields": {"roomId": "string"}}},
        )
        # More records than one listing returns, and a partition holding exactly LIST_N records
        # beside another one, so a listing that over-fetches shows up as extra GETs.
        await _fill(
            plain, [{"roomId": f"r{i % 3}", "content": f"c{i}"} for i in range(LIST_N + 20)]
        )
        await _fill(parted, [{"roomId": ROOM, "content": f"c{i}"} for i in range(LIST_N)])
        await _fill(parted, [{"roomId": BIG_ROOM, "content": f"c{i}"} for i in range(BIG_N)])
        await _fill(parted, [{"roomId": "r2", "content": f"c{i}"} for i in range(20)])
        counter = db.storage.requests
        runs: dict[str, list[dict[str, int]]] = {name: [] for name in expected_counts()}

        async def count(name: str, op: Awaitable[Any]) -> Any:
            counter.reset()  # a coroutine does nothing until awaited: only ``op`` is counted
            value = await op
            runs[name].append(counter.snapshot())
            return value

        for i in range(reps):
            rec = await count("insert", plain.insert({"roomId": ROOM, "content": "x"}))
            await count("get", plain.get(rec["id"]))
            await count("update", plain.update(rec["id"], {"content": f"y{i}"}))
            await count("delete", plain.delete(rec["id"]))
            await count(f"list {LIST_N}", plain.list(limit=LIST_N))

            # Insert into room r3 so the listing of r1 keeps exactly LIST_N records.
            prec = await count(
                "insert (partition)", parted.insert({"roomId": "r3", "content": "x"})
            )
            await count("get (partition)", parted.get(prec["id"]))
            await count("update (partition kept)", parted.update(prec["id"], {"content": f"y{i}"}))
            await count("update (partition moved)", parted.update(prec["id"], {"roomId": "r4"}))
            await count("delete (partition)", parted.delete(prec["id"]))
            page = await count(
                f"list {LIST_N} (partition)",
                parted.list(filter={"roomId": ROOM}, limit=LIST_N),
            )
            if len(page.items) != LIST_N or any(r["roomId"] != ROOM for r in page.items):
                raise AssertionError(f"partition listing returned {len(page.items)} records")
            page = await count(
                f"list {LIST_N} (partition of {BIG_N})",
                parted.list(filter={"roomId": BIG_ROOM}, limit=LIST_N),
            )
            if len(page.items) != LIST_N or page.cursor is None:
                raise AssertionError(f"partition listing returned {len(page.items)} records")
        return runs
    finally:
        await db.disconnect()


def _results(store: str, runs: dict[str, list[dict[str, int]]]) -> list[Result]:
    results = []
    for name, expected in expected_counts().items():
        measured = runs[name]
        exact = all(m == expected for m in measured)
        total = sum(expected.values())
        notes = []
        if not exact:
            odd = next(m for m in measured if m != expected)
            notes.append(f"MISMATCH: SPEC says {expected}, measured {odd}")
        results.append(
            Result(
                name=f"store requests: {name} [{store}]",
                params={"store": store, "op": name, "reps": len(measured)},
                unit="requests",
                ours=Stat.of(sum(m.values()) for m in measured),
                baseline=Stat.of([total] * len(measured)),
                target=Target("<=", 1.0),
                met=exact,
                extra={"expected": expected, "measured": measured[0], "all_runs": measured},
                notes=notes,
            )
        )
    return results


def run(quick: bool) -> list[Result]:
    reps = 3 if quick else 5
    results = _results("memory", asyncio.run(_measure("memory://", reps)))
    with s3_server() as server:
        runs = asyncio.run(_measure(server.url("store-requests"), 1 if quick else 3))
    results += _results("seaweedfs", runs)
    return results
