"""One process of the cache racing test (``test_cache_race.py``): writes its own ids (insert,
update, delete, re-insert), reads everyone's through its record cache, logs every write and
every read with wall-clock times, and at the end reports what its cache holds next to what the
store holds.

Protocol on stdin/stdout (one JSON line each): it prints ``ready``, waits for ``go``, runs for
``duration`` seconds of writes while reading, prints ``writes-done``, keeps reading until
``final``, waits ``settle`` seconds, writes its report to the file named last on its command
line, prints ``reported`` and exits.

Each id has a counter ``n`` that every operation on it increases (a delete takes a number too),
so a reader can tell from ``n`` which state it saw.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import random
import signal
import sys
import time
from typing import Any

from s3db_core import Database

SCHEMA = {"n": "number", "p": "string"}
PARTITIONS = {"byP": {"fields": {"p": "string"}}}
IDS_PER_SEED = 6


def ids_of(seed: int, owner: str) -> list[str]:
    return [f"s{seed}-{owner}-k{j}" for j in range(IDS_PER_SEED)]


MIN_WRITES = 10  # per resource and process
WRITE_CAP = 20.0  # seconds past the planned end at most


async def write_loop(res: Any, seed: int, owner: str, rng: random.Random, until: float,
                     ops: list, log: Any = None) -> None:  # fmt: skip
    """Random insert/update/delete/re-insert on this process's own ids, logged after each (also
    to ``log``, a file flushed at once, so a process killed mid-run leaves its writes known)."""
    state: dict[str, tuple[int, bool]] = {i: (0, False) for i in ids_of(seed, owner)}
    made = 0
    # At least MIN_WRITES each, however slow the machine (a loaded CI box once made too few in
    # the planned time for the test to prove anything), within a hard cap past ``until``.
    while time.time() < until or (made < MIN_WRITES and time.time() < until + WRITE_CAP):
        made += 1
        id = rng.choice(list(state))
        n, alive = state[id]
        n += 1
        if not alive:
            await res.insert({"id": id, "n": n, "p": owner})
            kind = "insert"
        elif rng.random() < 0.25:
            await res.delete(id)
            kind = "delete"
        else:
            await res.update(id, {"n": n})
            kind = "update"
        state[id] = (n, kind != "delete")
        ops.append([time.time(), id, n, kind])
        if log is not None:
            log.write(json.dumps(ops[-1]) + "\n")
            log.flush()
        await asyncio.sleep(rng.uniform(0, 0.02))


async def read_loop(res: Any, seed: int, owners: list[str], rng: random.Random,
                    stop: asyncio.Event, reads: list) -> None:  # fmt: skip
    """Reads of everyone's ids (get, and now and then a partition listing)."""
    every = [i for o in owners for i in ids_of(seed, o)]
    while not stop.is_set():
        if rng.random() < 0.1:
            owner = rng.choice(owners)
            start = time.time()
            page = await res.list(filter={"p": owner}, limit=100)
            seen = {r["id"]: r["n"] for r in page.items}
            if page.cursor is None:
                for id in ids_of(seed, owner):
                    reads.append([start, id, seen.get(id), "list"])
        else:
            id = rng.choice(every)
            start = time.time()
            record = await res.get_or_none(id)
            reads.append([start, id, None if record is None else record["n"], "get"])
        await asyncio.sleep(rng.uniform(0, 0.005))


async def report(db: Database, seeds: list[int]) -> dict[str, Any]:
    """What this process's cache holds, against the store, after the writers stopped."""
    cache = db.cache
    assert cache is not None
    mismatches = []
    for seed in seeds:
        res = db.resources[f"race{seed}"]
        stored_ids: set[str] = set()
        after = None
        while True:  # the store's own listing, not the cache's
            page = await db.storage.list(res._data_prefix, start_after=after)
            stored_ids.update(k.rsplit("/id=", 1)[1] for k in page.keys)
            if page.next_start_after is None:
                break
            after = page.next_start_after
        for (name, id), entry in list(cache._entries.items()):
            if name != res.name or entry.doubt:
                continue  # a doubt marker holds nothing: the next read asks the store
            cached = None if entry.data is None else json.loads(entry.data)
            stored = await res.get_or_none(id, consistency="store")
            if cached != stored:
                mismatches.append({"id": id, "cache": cached, "store": stored})
        stream = cache._streams.get(res.name)
        for prefix, ids in (stream.ids.items() if stream else ()):
            if prefix == res._data_prefix and set(ids) != stored_ids:
                mismatches.append({"prefix": prefix, "cache": sorted(ids), "store": sorted(stored_ids)})
    return {"mismatches": mismatches, "stats": db.stats.snapshot(), "serving": cache.serving}


async def main() -> None:
    faulthandler.register(signal.SIGUSR1)
    store, broker, name, owners_arg, seeds_arg, duration, settle, max_stale, out = sys.argv[1:10]
    owners = owners_arg.split(",")
    seeds = [int(s) for s in seeds_arg.split(",")]
    db = Database(store, broker=broker, cache={"max_stale": float(max_stale)})
    await db.connect()
    for seed in seeds:
        await db.create_resource(f"race{seed}", SCHEMA, partitions=PARTITIONS)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    def say(what: Any) -> None:
        sys.stdout.write(json.dumps(what) + "\n")
        sys.stdout.flush()

    say("ready")
    assert (await stdin.readline()).strip() == b'"go"'
    ops: list = []
    reads: list = []
    stop = asyncio.Event()
    until = time.time() + float(duration)
    readers = [
        loop.create_task(
            read_loop(db.resources[f"race{s}"], s, owners, random.Random(f"r{s}{name}"), stop, reads)
        )
        for s in seeds
    ]
    with open(out + ".ops", "w") as log:
        await asyncio.gather(*(
            write_loop(db.resources[f"race{s}"], s, name, random.Random(f"w{s}{name}"), until,
                       ops, log)
            for s in seeds
        ))  # fmt: skip
    say("writes-done")
    assert (await stdin.readline()).strip() == b'"final"'
    await asyncio.sleep(float(settle))
    stop.set()
    await asyncio.gather(*readers)
    result = await report(db, seeds)
    await db.disconnect()
    with open(out, "w") as f:
        json.dump({"name": name, "ops": ops, "reads": reads, **result}, f)
    say("reported")


if __name__ == "__main__":
    asyncio.run(main())
