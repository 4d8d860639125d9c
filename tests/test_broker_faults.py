"""Broker outages on real servers: writes never fail or hang, the broker reconnects by itself,
and a loss is always visible as a new epoch, never as a silent gap.

Each test starts its own Redis or NATS (so stopping it disturbs no other test), kills it with
SIGKILL mid-run and starts it again on the same port.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_helpers import DEADLINE, eventually, open_db, texts
from services import Service, start_nats, start_redis

from s3db_core import Position

OUTAGE_WRITE_BOUND = 2.0  # seconds: a write during an outage returns within this
BUSY_LUA = """
local function ms() local t = redis.call('TIME') return t[1] * 1000 + t[2] / 1000 end
local stop = ms() + tonumber(ARGV[1])
while ms() < stop do end
return 1
"""


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'store'}"


@pytest.fixture(params=["redis", "nats"])
def durable_server(request: pytest.FixtureRequest) -> Iterator[Service]:
    """A private broker server that keeps its data across a kill -9 (Redis: AOF fsynced on
    every write; NATS: JetStream's file store)."""
    service = start_redis(persistent=True) if request.param == "redis" else start_nats()
    try:
        yield service
    finally:
        service.stop()


def url_of(service: Service) -> str:
    return f"{service.url}?prefix=faults&publish_timeout=0.3"


async def write(db, *values: str) -> float:
    """Insert one note per value; return the slowest insert's duration."""
    slowest = 0.0
    for value in values:
        started = time.monotonic()
        await db.resources.notes.insert({"text": value})
        slowest = max(slowest, time.monotonic() - started)
    return slowest


async def test_writes_survive_an_outage_and_nothing_is_lost(
    store_url: str, durable_server: Service
) -> None:
    url = url_of(durable_server)
    writer, seen_by_writer = await open_db(store_url, url)
    server, seen_by_server = await open_db(store_url, url)  # another "process" on the broker
    try:
        await write(writer, "before-1", "before-2")
        await eventually(lambda: len(seen_by_server.of("notes")) == 2, "changes before")
        before = seen_by_server.of("notes")[-1]
        resume_from = Position(before.offset, before.epoch)  # type: ignore[arg-type]

        durable_server.kill()
        slowest = await write(writer, "during-1", "during-2", "during-3")
        assert slowest < OUTAGE_WRITE_BOUND, f"a write took {slowest:.2f} s during the outage"
        assert writer.broker.pending == 3  # type: ignore[attr-defined]
        page = await writer.resources.notes.list(limit=100)
        assert len(page.items) == 5  # the store has them all: it is the source of truth

        durable_server.start()
        await eventually(lambda: len(seen_by_server.of("notes")) == 5, "changes after restart")
        await write(writer, "after-1")
        expected = ["before-1", "before-2", "during-1", "during-2", "during-3", "after-1"]
        await eventually(lambda: len(seen_by_server.of("notes")) == 6, "the change after")
        await eventually(lambda: len(seen_by_writer.of("notes")) == 6, "the writer's own hook")
        for seen in (seen_by_server, seen_by_writer):
            changes = seen.of("notes")
            assert texts(changes) == expected
            assert len({c.epoch for c in changes}) == 1  # nothing lost: the same epoch
            offsets = [c.offset for c in changes]
            assert offsets == sorted(set(offsets))
        replay = await server.broker.history("notes", resume_from)
        assert replay is not None and texts(replay) == expected[2:]  # a resume is exact
    finally:
        await writer.disconnect()
        await server.disconnect()


async def test_changes_dropped_in_an_outage_open_a_new_epoch(
    store_url: str, durable_server: Service
) -> None:
    url = url_of(durable_server)
    writer, _ = await open_db(store_url, url, buffer_size=2)
    server, seen = await open_db(store_url, url)
    try:
        await write(writer, "kept-0")
        await eventually(lambda: len(seen.of("notes")) == 1, "the first change")
        first = seen.of("notes")[0]
        durable_server.kill()
        slowest = await write(writer, "kept-1", "kept-2", "dropped-3", "dropped-4")
        assert slowest < OUTAGE_WRITE_BOUND
        assert writer.broker.dropped == 2  # type: ignore[attr-defined]
        durable_server.start()
        await eventually(lambda: len(seen.of("notes")) == 3, "the buffered changes")
        await write(writer, "after-5")
        await eventually(lambda: len(seen.of("notes")) == 4, "the change after the loss")
        changes = seen.of("notes")
        assert texts(changes) == ["kept-0", "kept-1", "kept-2", "after-5"]
        assert changes[2].epoch == first.epoch
        assert changes[3].epoch != first.epoch  # subscribers learn of the gap
        at_loss = Position(changes[2].offset, changes[2].epoch)  # type: ignore[arg-type]
        assert await server.broker.history("notes", at_loss) is None
        now = await server.broker.position("notes")
        assert now == Position(changes[3].offset, changes[3].epoch)  # type: ignore[arg-type]
    finally:
        await writer.disconnect()
        await server.disconnect()


async def test_redis_that_lost_its_data_starts_a_new_epoch(store_url: str) -> None:
    service = start_redis(persistent=False)
    try:
        url = url_of(service)
        db, seen = await open_db(store_url, url)
        try:
            await write(db, "a", "b")
            await eventually(lambda: len(seen.of("notes")) == 2, "two changes")
            old = seen.of("notes")[-1]
            service.restart()  # a cache-only Redis comes back empty
            await write(db, "c")
            await eventually(lambda: len(seen.of("notes")) == 3, "the change after")
            new = seen.of("notes")[-1]
            assert new.epoch != old.epoch
            since = Position(old.offset, old.epoch)  # type: ignore[arg-type]
            assert await db.broker.history("notes", since) is None  # must reload
        finally:
            await db.disconnect()
    finally:
        service.stop()


async def test_a_database_starts_while_its_broker_is_down(
    store_url: str, durable_server: Service
) -> None:
    url = url_of(durable_server)
    durable_server.kill()
    started = time.monotonic()
    db, seen = await open_db(store_url, f"{url}&connect_timeout=0.5")
    try:
        assert time.monotonic() - started < 3.0  # connect is bounded
        await write(db, "while-down")
        durable_server.start()
        await eventually(lambda: len(seen.of("notes")) == 1, "the buffered change")
        assert texts(seen.of("notes")) == ["while-down"]
        other, _ = await open_db(store_url, url)  # a process that started on time sees it too
        try:
            assert (await other.broker.position("notes")).offset == seen.of("notes")[0].offset
        finally:
            await other.disconnect()
    finally:
        await db.disconnect()


async def test_a_retried_append_that_had_arrived_is_not_appended_twice(
    store_url: str, redis_url: str
) -> None:
    """Redis busy (a long script): the attempts time out on our side, but the first one sits in
    Redis's socket buffer and runs when Redis is free again; the change must be appended once."""
    import redis.asyncio as aioredis
    from redis.exceptions import TimeoutError as RedisTimeoutError

    url = f"{redis_url}?prefix=dedupe{time.monotonic_ns()}&publish_timeout=0.1"
    db, seen = await open_db(store_url, url)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        await write(db, "first")
        await eventually(lambda: len(seen.of("notes")) == 1, "the first change")
        busy = asyncio.ensure_future(admin.eval(BUSY_LUA, 0, 1500))  # Redis stalls 1.5 s
        probe = aioredis.Redis.from_url(redis_url, socket_timeout=0.05)
        try:
            end = time.monotonic() + DEADLINE
            while True:  # until Redis stops answering: the script is running
                try:
                    await probe.ping()
                except RedisTimeoutError:
                    break
                assert time.monotonic() < end, "the busy script never started"
        finally:
            await probe.aclose()
        slowest = await write(db, "paused")
        assert slowest < OUTAGE_WRITE_BOUND
        assert db.broker.pending == 1  # type: ignore[attr-defined]
        await eventually(lambda: db.broker.pending == 0, "the buffer to drain")  # type: ignore[attr-defined]
        await write(db, "last")
        await eventually(lambda: len(seen.of("notes")) >= 3, "three changes")
        changes = seen.of("notes")
        assert texts(changes) == ["first", "paused", "last"]
        assert [c.offset for c in changes] == [1, 2, 3]
        history = await db.broker.history("notes", Position(0, changes[0].epoch))  # type: ignore[arg-type]
        assert history is not None and texts(history) == ["first", "paused", "last"]
        await busy
    finally:
        await admin.aclose()
        await db.disconnect()


async def test_nats_that_lost_its_stream_starts_a_new_epoch(store_url: str) -> None:
    service = start_nats()
    try:
        url = url_of(service)
        db, seen = await open_db(store_url, url)
        other, seen_by_other = await open_db(store_url, url)
        try:
            await write(db, "a", "b")
            await eventually(lambda: len(seen.of("notes")) == 2, "two changes")
            old = seen.of("notes")[-1]
            service.kill()
            shutil.rmtree(service.workdir / "js")  # the server comes back without its store
            service.start()
            await write(db, "c")
            for collected in (seen, seen_by_other):
                await eventually(lambda c=collected: len(c.of("notes")) == 3, "the change after")
                assert texts(collected.of("notes")) == ["a", "b", "c"]
                assert collected.of("notes")[-1].epoch != old.epoch
            since = Position(old.offset, old.epoch)  # type: ignore[arg-type]
            assert await other.broker.history("notes", since) is None  # must reload
        finally:
            await db.disconnect()
            await other.disconnect()
    finally:
        service.stop()
