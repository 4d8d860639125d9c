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
    server = start_s3_server(restartable=True)
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
    url = own_s3_server.url(f"kill-{uuid.uuid4().hex[:12]}")
    dbs = [Database(url + QUERY) for _ in range(2)]  # two clients, as two processes would be
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

        # Once more with every writer done, so that no write they gave up on can still land
        # during the checks; then a fresh client (default timeouts) reads what the store holds.
        own_s3_server.kill()
        await asyncio.to_thread(own_s3_server.restart, 30)
        reader = Database(url)
        dbs.append(reader)
        await reader.connect()
        items = await reader.create_resource("items", FIELDS, partitions=PARTS)
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
            unlisted = {id for id, r in stored.items() if r["room"] == room} - listed
            assert not unlisted, [
                (stored[id], run.acked.get(id, "never acknowledged")) for id in unlisted
            ]
            assert listed == {id for id, r in stored.items() if r["room"] == room}

        report = await reader.repair(grace=0)  # nothing is in flight
        result = report.resources["items"]
        assert result.damaged == [] and result.references_added == []
        assert result.records == len(stored)
        assert (await reader.repair(grace=0)).clean
        for room in ROOMS:
            listed = {r["id"] for r in await items.query({"room": room})}
            assert listed == {id for id, r in stored.items() if r["room"] == room}
    finally:
        for db in dbs:
            await db.disconnect()


async def test_kill_9_at_each_step_of_a_write_keeps_listings_true(
    own_s3_server: S3Server, monkeypatch
):
    """Four writes, each held right after one step's request returned, and the store killed
    with all four there: an insert between its partition reference and its record, an insert
    after its record, an update between its new reference and its record, and an update after
    its record but before its old reference is removed. After the restart, what was
    acknowledged is stored and listed where it belongs, what failed is typed and left nothing
    listed; repair removes the references left behind."""
    url = own_s3_server.url(f"steps-{uuid.uuid4().hex[:12]}")
    db = Database(url + QUERY)
    reader = Database(url)  # a fresh client after the restart, default timeouts
    await db.connect()
    try:
        items = await db.create_resource("items", FIELDS, partitions=PARTS)
        for id in ("c", "d"):
            await items.insert({"id": id, "writer": "w", "room": "r0", "n": 0})
        storage = db.storage
        real_put = storage.put
        hold_after = {  # a write waits for the kill right after its PUT of this key returns
            "resource=items/partition=byRoom/room=r0/id=a",
            "resource=items/data/id=b",
            "resource=items/partition=byRoom/room=r1/id=c",
            "resource=items/data/id=d",
        }
        held: list[str] = []
        killed = asyncio.Event()

        async def put(key: str, *args: Any, **kwargs: Any) -> str:
            etag = await real_put(key, *args, **kwargs)
            if key in hold_after:
                held.append(key)
                if len(held) == len(hold_after):  # every write is at its step: kill -9 now
                    own_s3_server.kill()
                    killed.set()
                await killed.wait()
            return etag

        monkeypatch.setattr(storage, "put", put)

        async def outcome(write: Any) -> dict[str, Any] | None:
            try:
                return await write
            except StorageError:
                return None

        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(30):
            a, b, c, d = await asyncio.gather(
                outcome(items.insert({"id": "a", "writer": "w", "room": "r0", "n": 0})),
                outcome(items.insert({"id": "b", "writer": "w", "room": "r0", "n": 0})),
                outcome(items.update("c", {"n": 1, "room": "r1"})),
                outcome(items.update("d", {"n": 1, "room": "r2"})),
            )
        assert sorted(held) == sorted(hold_after) and loop.time() - started < WRITE_BOUND
        # Cut short before their record committed: failed. After it: acknowledged (only the
        # removal of d's old reference was lost).
        assert (a, c) == (None, None) and b is not None and d is not None
        await asyncio.to_thread(own_s3_server.restart, 30)
        await reader.connect()
        items = await reader.create_resource("items", FIELDS, partitions=PARTS)

        async def listed(room: str) -> set[str]:
            return {r["id"] for r in await items.query({"room": room})}

        stored = {r["id"]: r for r in await items.query()}
        assert stored == {"b": b, "c": {"id": "c", "writer": "w", "room": "r0", "n": 0}, "d": d}
        assert [await listed(room) for room in ROOMS] == [{"b", "c"}, set(), {"d"}]

        report = await reader.repair(grace=0)
        result = report.resources["items"]
        assert result.damaged == [] and result.references_added == [] and result.records == 3
        assert [k.rsplit("/", 2)[1:] for k in result.references_removed] == [
            ["room=r0", "id=a"],  # the insert that never committed
            ["room=r0", "id=d"],  # the room d moved from
            ["room=r1", "id=c"],  # the move that never committed
        ]
        assert (await reader.repair(grace=0)).clean
        assert [await listed(room) for room in ROOMS] == [{"b", "c"}, set(), {"d"}]
    finally:
        await reader.disconnect()
        await db.disconnect()
