"""kill -9 of the store itself (SeaweedFS) while writers insert and move records between
partitions: every acknowledged write survives the restart, readable with its content and listed
in its partition; every write cut short failed with a typed error within the store's timeouts;
repair finds nothing damaged and no record missing from a listing."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from s3server import S3Server, start_s3_server

from s3db_core import ConflictError, Database, StorageError, hookimpl

TIMEOUT = 1.5  # the store's total bound per call; connecting and each read are bounded tighter
QUERY = f"?timeout={TIMEOUT}&connect_timeout=0.5&read_timeout=1"
# The longest a write may take: an update reads, writes its new reference, writes the record and
# reads back once when the reply is lost, each call within TIMEOUT; the rest is CPU margin for a
# loaded machine.
WRITE_BOUND = 4 * TIMEOUT + 4
WRITERS_PER_DB = 4
KILLS = 2  # the store is killed and restarted this many times
KILL_AFTER = 50  # acknowledged writes before each kill (counted from the start or last restart)
AFTER_RESTART = 4  # acknowledged writes each writer needs once the store is back the last time
ROOMS = ("r0", "r1", "r2")
FIELDS = {"writer": "string", "room": "string", "n": "number"}
PARTS = {"byRoom": {"fields": {"room": "string"}}}


@pytest.fixture
def own_s3_server() -> Iterator[S3Server]:
    """A SeaweedFS of this test's own: it gets killed, so never the session's shared one."""
    server = start_s3_server()
    try:
        yield server
    finally:
        server.kill()  # its data need not survive: no SIGTERM grace
        server.stop()


class Recorder:
    def __init__(self) -> None:
        self.changes: list = []

    @hookimpl
    def s3db_change(self, change) -> None:
        self.changes.append(change)


@dataclass
class Run:
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> record last acknowledged
    every_ack: list[tuple[str, int]] = field(default_factory=list)  # (id, n) of every write acked
    tried: dict[str, int] = field(default_factory=dict)  # id -> highest n any update tried
    failures: list[BaseException] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    acks: int = 0
    kill_at: int = KILL_AFTER  # the acknowledgement that triggers the next kill
    in_flight: int = 0
    in_flight_at_kills: list[int] = field(default_factory=list)
    kill_now: asyncio.Event = field(default_factory=asyncio.Event)
    restarted: asyncio.Event = field(default_factory=asyncio.Event)  # for the last time


def room_of(n: int) -> str:
    return ROOMS[n % len(ROOMS)]


async def writer(items: Any, name: str, run: Run, seed: int) -> None:
    """Insert records and move them between rooms (every update changes the partition), each
    record written by this writer alone, until it has AFTER_RESTART acknowledgements after the
    store came back."""
    chance = random.Random(seed)
    loop = asyncio.get_running_loop()
    mine: list[str] = []
    after_restart = 0
    while after_restart < AFTER_RESTART:
        restarted = run.restarted.is_set()
        if len(mine) < 2 or chance.random() < 0.4:
            id = None
            call = items.insert({"writer": name, "room": room_of(len(mine)), "n": 0})
        else:
            id = chance.choice(mine)
            n = run.tried[id] = run.tried[id] + 1
            call = items.update(id, {"n": n, "room": room_of(n)})
        started = loop.time()
        run.in_flight += 1
        try:
            async with asyncio.timeout(WRITE_BOUND + 5):  # a hang fails the test, not the run
                record = await call
        except (StorageError, ConflictError) as exc:
            run.failures.append(exc)
            continue
        finally:
            run.in_flight -= 1
            run.durations.append(loop.time() - started)
        if id is None:
            mine.append(record["id"])
            run.tried[record["id"]] = 0
        run.acked[record["id"]] = record
        run.every_ack.append((record["id"], record["n"]))
        run.acks += 1
        if run.acks == run.kill_at:
            run.kill_now.set()
        if restarted:
            after_restart += 1


async def kill_and_restart(server: S3Server, run: Run) -> None:
    """kill -9 the store each time the writers got KILL_AFTER more acknowledgements (while
    they have writes in flight), and start it again on the same data."""
    for _ in range(KILLS):
        await run.kill_now.wait()
        run.kill_now.clear()
        run.in_flight_at_kills.append(run.in_flight)
        server.kill()
        await asyncio.to_thread(server.restart, 30)
        run.kill_at = run.acks + KILL_AFTER
    run.restarted.set()


async def test_kill_9_of_the_store_loses_no_acknowledged_write(own_s3_server: S3Server):
    url = own_s3_server.url(f"kill-{uuid.uuid4().hex[:12]}") + QUERY
    dbs = [Database(url) for _ in range(2)]  # two clients, as two processes would be
    recorder = Recorder()
    for db in dbs:
        await db.connect()
        await db.use_plugin(recorder)
    try:
        resources = [await db.create_resource("items", FIELDS, partitions=PARTS) for db in dbs]
        run = Run()
        writers = [
            writer(items, f"w{d}{i}", run, seed=10 * d + i)
            for d, items in enumerate(resources)
            for i in range(WRITERS_PER_DB)
        ]
        async with asyncio.timeout(60), asyncio.TaskGroup() as group:  # any other error ends it
            group.create_task(kill_and_restart(own_s3_server, run))
            for one in writers:
                group.create_task(one)

        assert len(run.in_flight_at_kills) == KILLS and min(run.in_flight_at_kills) > 0
        assert run.failures  # ...and they failed, each with a typed error (others end the run)
        assert max(run.durations) < WRITE_BOUND, "a write outlived the store's time bounds"

        # Every acknowledged write was announced, none twice, each record's in commit order.
        announced = [(c.record["id"], c.record["n"], c.version) for c in recorder.changes]
        assert set(run.every_ack) <= {(id, n) for id, n, _ in announced}
        assert len({(id, v) for id, _, v in announced}) == len(announced)
        for id in run.acked:
            versions = [v for i, _, v in announced if i == id]
            assert versions == sorted(versions)

        items = resources[0]
        stored = {r["id"]: r for r in await items.query()}
        for id, acked in run.acked.items():
            found = await items.get(id)
            assert found == stored[id]
            # What was acknowledged, or a later update of it (one whose outcome was unknown).
            assert acked["n"] <= found["n"] <= run.tried[id]
            if found["n"] == acked["n"]:
                assert found == acked
            if found["n"]:  # moved by an update (an insert picks its own room)
                assert found["room"] == room_of(found["n"])
        for room in ROOMS:
            listed = {r["id"] for r in await items.query({"room": room})}
            # Every record that exists, acknowledged or not, is listed in its partition.
            assert listed == {id for id, r in stored.items() if r["room"] == room}

        report = await dbs[0].repair(grace=0)  # every writer is done: nothing is in flight
        result = report.resources["items"]
        assert result.damaged == [] and result.references_added == []
        assert result.records == len(stored)
        assert (await dbs[0].repair(grace=0)).clean
        for room in ROOMS:
            listed = {r["id"] for r in await items.query({"room": room})}
            assert listed == {id for id, r in stored.items() if r["room"] == room}
    finally:
        for db in dbs:
            await db.disconnect()
