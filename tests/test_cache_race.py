"""The record cache under racing writers, in real processes, with faults.

Three processes (``cache_race_worker.py``) share SeaweedFS and a broker (Redis, then NATS), each
with the cache on and ``max_stale``. Each writes its own ids at random (insert, update, delete,
re-insert) and reads everyone's (get, and partition listings) through its cache. Meanwhile this
process writes other ids straight to the store without the broker (a writer that bypasses the
stream) and takes the broker down for a while: Redis comes back empty (a new epoch), or with its
data (``redis-data``: an append-only file), and NATS keeps its stream. While the broker is down,
one writer (``VICTIM``) is killed with SIGKILL: the changes it held for the broker are never
published, so its last writes bypassed the stream like the raw writer's.

Checks, for every seed (each seed is its own resource, run side by side):
* reads never go backwards within a process (each id's counter ``n`` only grows, and a "not
  found" must be explained by a delete at or after what was already seen);
* no read is staler than the bound: ``STREAM_BOUND`` for writes made through s3db, and
  ``max_stale`` plus a sweep (``RAW_BOUND``) for writes that bypassed the stream (the raw
  writer's, and the killed writer's from shortly before the outage on, counted from when the
  broker answers again);
* after the writers stop, what every cache holds equals the store.
A failure names its seed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cache_race_worker import IDS_PER_SEED, PARTITIONS, SCHEMA, ids_of
from services import start_nats, start_redis

from s3db_core import Database

SEEDS = list(range(1, 11))
OWNERS = ["a", "b", "c"]
MAX_STALE = 0.5
STREAM_BOUND = 2.0  # a change through the stream reaches every serving cache within this
RAW_BOUND = MAX_STALE + 3.0  # a write outside the stream: the sweep period plus one sweep
OUTAGE_GRACE = 6.0  # a writer publishes what it held through the outage within this
OUTAGE = 1.0  # the broker stays down this long; the victim is killed at its end
VICTIM = "c"
UNPUBLISHED = 0.2  # a write the victim finished this long after the broker went down is held
DURATION = 5.0
SETTLE = 2 * MAX_STALE + 1.5
LINE_DEADLINE = 120.0
WORKER = Path(__file__).with_name("cache_race_worker.py")


async def _line(proc: asyncio.subprocess.Process) -> Any:
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), LINE_DEADLINE)
    if not raw:
        raise AssertionError(f"worker exited early (code {await proc.wait()})")
    return json.loads(raw)


async def _send(procs: list[asyncio.subprocess.Process], what: str) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write((json.dumps(what) + "\n").encode())
        await proc.stdin.drain()


async def _raw_writer(db: Database, until: float, ops: list) -> None:
    """Writes that never reach the broker, on ids of their own."""
    rng = random.Random("raw")
    state = {(s, i): (0, False) for s in SEEDS for i in ids_of(s, "raw")}
    while time.time() < until:
        seed, id = key = rng.choice(list(state))
        res = db.resources[f"race{seed}"]
        n, alive = state[key]
        n += 1
        if not alive:
            await res.insert({"id": id, "n": n, "p": "raw"})
            kind = "insert"
        elif rng.random() < 0.25:
            await res.delete(id)
            kind = "delete"
        else:
            await res.update(id, {"n": n})
            kind = "update"
        state[key] = (n, kind != "delete")
        ops.append([time.time(), id, n, kind])
        await asyncio.sleep(rng.uniform(0.01, 0.05))


def _violations(reads: list, ops: list, outage: tuple[float, float]) -> list[tuple[str, str]]:
    """(id, what went wrong) for each read that went backwards or was too stale. A write made
    around the broker outage (``outage``: killed, answering again) waits in its writer's outage
    buffer: it is due ``OUTAGE_GRACE`` after the broker answers again. The victim's writes from
    then on were never published: they are due like raw writes, from then."""
    history: dict[str, list[tuple[int, str, float]]] = {}
    killed, back = outage
    victim = f"-{VICTIM}-"
    for done, id, n, kind in ops:
        lost = victim in id and done >= killed - STREAM_BOUND
        bound = RAW_BOUND if "-raw-" in id or lost else STREAM_BOUND
        due = done + bound
        if "-raw-" not in id and killed - bound <= done <= back + OUTAGE_GRACE:
            due = max(due, back + OUTAGE_GRACE + bound)
        history.setdefault(id, []).append((n, kind, due))
    for id, entries in history.items():
        entries.sort()
        if victim in id:  # killed between a write and its log line: one more state may exist
            entries.append((entries[-1][0] + 1, "delete", float("inf")))
    floors: dict[str, int] = {}
    found = []
    for start, id, n, how in reads:
        entries = history.get(id, [])
        deletes = [e[0] for e in entries if e[1] == "delete"]
        floor = floors.get(id, 0)
        # Monotonic: what this process saw of the id never goes back.
        if n is None:
            if floor:
                later = [d for d in deletes if d >= floor]
                if not later:
                    found.append((id, f"{how} found nothing after n={floor}"))
                    continue
                floors[id] = later[0]
        elif n < floor:
            found.append((id, f"{how} saw n={n} after n={floor}"))
            continue
        else:
            floors[id] = n
        # Staleness: a write due (finished more than the bound) before the read must show.
        due = max((e[0] for e in entries if e[2] <= start), default=0)
        if n is None:
            if due and not any(d >= due for d in deletes):
                found.append((id, f"{how} found nothing, n={due} was due"))
        elif n < due:
            found.append((id, f"{how} saw n={n}, n={due} was due"))
    return found


def _logged_ops(path: Path) -> list:
    """The ops a killed worker logged (its last line may be cut short)."""
    ops = []
    for line in path.read_text().splitlines():
        try:
            ops.append(json.loads(line))
        except ValueError:
            pass
    return ops


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "engine",
    [
        "redis",
        "redis-data",
        "nats",
    ],
)  # fmt: skip
async def test_every_cache_stays_exact_under_racing_writers_and_faults(engine, s3_server, tmp_path):
    if engine == "nats":
        service = start_nats()
    else:
        service = start_redis(persistent=engine == "redis-data")
    procs: list[asyncio.subprocess.Process] = []
    raw = None
    try:
        tag = uuid.uuid4().hex[:10]
        broker = f"{service.url}?prefix=race{tag}"
        store = s3_server.url(f"race-{tag}")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKER.parent.parent), str(WORKER.parent)])}
        seeds = ",".join(map(str, SEEDS))
        for name in OWNERS:
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, str(WORKER), store, broker, name, ",".join(OWNERS), seeds,
                str(DURATION), str(SETTLE), str(MAX_STALE), str(tmp_path / f"{name}.json"),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            ))  # fmt: skip
        for proc in procs:
            assert await _line(proc) == "ready"
        raw = Database(store)  # the local broker: nobody else hears these writes
        await raw.connect()
        for seed in SEEDS:
            await raw.create_resource(f"race{seed}", SCHEMA, partitions=PARTITIONS)
        await _send(procs, "go")
        raw_ops: list = []
        until = time.time() + DURATION
        writer = asyncio.create_task(_raw_writer(raw, until, raw_ops))
        await asyncio.sleep(DURATION * 0.4)
        killed = time.time()
        await asyncio.to_thread(service.kill)  # the broker is down: writers hold their changes
        await asyncio.sleep(OUTAGE)
        log = tmp_path / f"{VICTIM}.json.ops"
        deadline = time.time() + LINE_DEADLINE
        while not any(op[0] > killed + UNPUBLISHED for op in _logged_ops(log)):
            assert time.time() < deadline, "the victim made no write while the broker was down"
            await asyncio.sleep(0.05)  # a write may wait for the broker before it is held
        victim = procs[OWNERS.index(VICTIM)]
        victim.kill()  # SIGKILL, with the changes it held for the broker not yet published
        await victim.wait()
        victim_at = time.time()
        # Redis comes back empty, or with its data; NATS keeps its stream
        await asyncio.to_thread(service.start)
        back = time.time()
        survivors = [p for p in procs if p is not victim]
        for proc in survivors:
            assert await _line(proc) == "writes-done"
        await writer
        await _send(survivors, "final")
        for proc in survivors:
            assert await _line(proc) == "reported"
        names = [name for name in OWNERS if name != VICTIM]
        results = [json.loads((tmp_path / f"{name}.json").read_text()) for name in names]
        for proc in survivors:
            assert await asyncio.wait_for(proc.wait(), LINE_DEADLINE) == 0
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if raw is not None:
            await raw.disconnect()
        service.stop()

    victim_ops = _logged_ops(tmp_path / f"{VICTIM}.json.ops")
    unpublished = [op for op in victim_ops if killed + UNPUBLISHED < op[0] <= victim_at]
    assert unpublished, "the victim made no write while the broker was down"
    ops = raw_ops + victim_ops + [op for r in results for op in r["ops"]]
    assert len(ops) > len(SEEDS) * len(OWNERS) * 5, "too few writes to prove anything"
    failures: dict[int, list[str]] = {}
    for result in results:
        for id, what in _violations(result["reads"], ops, (killed, back)):
            seed = int(id.split("-")[0][1:])
            failures.setdefault(seed, []).append(f"process {result['name']}: {id}: {what}")
        for mismatch in result["mismatches"]:
            key = mismatch.get("id") or mismatch["prefix"]
            seed = int(key.split("-")[0][1:]) if "id" in mismatch else int(key.split("race")[1].split("/")[0])
            failures.setdefault(seed, []).append(f"process {result['name']}: cache != store: {mismatch}")
        assert result["serving"], f"process {result['name']} is not serving at the end"
        assert result["stats"]["cache_hits"] > 0
        if engine == "redis":  # Redis came back empty: every cache had to start over
            assert result["stats"]["cache_flushes"] >= 1, result["stats"]
    reads = sum(len(r["reads"]) for r in results)
    print(f"{engine}: {len(ops)} writes ({len(unpublished)} never published), {reads} reads, "
          f"stats {[r['stats'] for r in results]}")  # fmt: skip
    if failures:
        lines = [f"seed {seed}: {line}" for seed in sorted(failures) for line in failures[seed][:5]]
        pytest.fail(f"{engine}: failing seeds {sorted(failures)}\n" + "\n".join(lines))
    assert IDS_PER_SEED > 0
