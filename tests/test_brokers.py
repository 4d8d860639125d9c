"""One broker test suite, run against every engine (local, Redis, NATS) on real servers.

A user's view: a Database on a broker URL, a plugin whose ``s3db_change`` hook collects what it
receives, writes through resources; and the broker's own ``position`` / ``history`` answers that
resuming subscribers rely on.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from broker_helpers import DEADLINE, Collector, eventually, open_db, texts

from s3db_core import Change, Database, Position
from s3db_core.brokers import load_broker
from s3db_core.brokers.local import LocalBroker


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'store'}"


@pytest.fixture
async def db(store_url: str, broker_url: str) -> AsyncIterator[tuple[Database, Collector]]:
    pair = await open_db(store_url, broker_url)
    yield pair
    await pair[0].disconnect()


async def test_changes_arrive_in_order_with_increasing_positions(db) -> None:
    database, seen = db
    notes = database.resources.notes
    first = await notes.insert({"text": "one"})
    await notes.update(first["id"], {"text": "one, edited"})
    await notes.insert({"text": "two"})
    await notes.delete(first["id"])
    await eventually(lambda: len(seen.of("notes")) == 4, "four changes")
    changes = seen.of("notes")
    assert [c.event for c in changes] == ["insert", "update", "insert", "delete"]
    assert texts(changes) == ["one", "one, edited", "two", "one, edited"]
    offsets = [c.offset for c in changes]
    assert all(isinstance(o, int) for o in offsets)
    assert offsets == sorted(set(offsets)), offsets  # strictly increasing
    assert len({c.epoch for c in changes}) == 1 and changes[0].epoch
    position = await database.broker.position("notes")
    assert position == Position(changes[-1].offset, changes[-1].epoch)  # type: ignore[arg-type]


async def test_history_since_a_position_is_exact(db) -> None:
    database, seen = db
    notes, broker = database.resources.notes, database.broker
    start = await broker.position("notes")
    assert start.offset == 0
    for i in range(6):
        await notes.insert({"text": f"n{i}"})
    await eventually(lambda: len(seen.of("notes")) == 6, "six changes")
    live = seen.of("notes")
    assert start.epoch == live[0].epoch  # a snapshot taken before the first write resumes
    everything = await broker.history("notes", start)
    assert everything is not None
    assert [(c.offset, c.epoch, c.record) for c in everything] == [
        (c.offset, c.epoch, c.record) for c in live
    ]
    middle = Position(live[2].offset, live[2].epoch)  # type: ignore[arg-type]
    rest = await broker.history("notes", middle)
    assert rest is not None and texts(rest) == ["n3", "n4", "n5"]
    assert [c.event for c in rest] == ["insert"] * 3
    latest = await broker.position("notes")
    assert await broker.history("notes", latest) == []
    assert await broker.history("notes", Position(latest.offset, "another-epoch")) is None
    assert await broker.history("notes", Position(latest.offset + 100, latest.epoch)) is None
    assert (
        await broker.history("unknown_resource", Position(latest.offset + 100, latest.epoch))
        is None
    )


async def test_publish_returns_the_position_listeners_see(db) -> None:
    database, seen = db
    published = await database.broker.publish(
        Change("notes", "insert", {"id": "x1", "text": "by hand"}, None, int(time.time() * 1000), 1)
    )
    assert published.offset is not None and published.epoch
    await eventually(lambda: len(seen.of("notes")) == 1, "the change")
    assert (seen.of("notes")[0].offset, seen.of("notes")[0].epoch) == (
        published.offset,
        published.epoch,
    )


async def test_history_is_bounded_by_count(store_url: str, broker_url: str) -> None:
    database, seen = await open_db(store_url, broker_url, history_size=5)
    try:
        for i in range(8):
            await database.resources.notes.insert({"text": f"n{i}"})
        await eventually(lambda: len(seen.of("notes")) == 8, "eight changes")
        live = seen.of("notes")
        broker = database.broker
        assert await broker.history("notes", Position(0, live[0].epoch)) is None  # trimmed
        oldest_kept = Position(live[2].offset, live[2].epoch)  # type: ignore[arg-type]
        kept = await broker.history("notes", oldest_kept)
        assert kept is not None and texts(kept) == [f"n{i}" for i in range(3, 8)]
        too_old = Position(live[1].offset, live[1].epoch)  # type: ignore[arg-type]
        assert await broker.history("notes", too_old) is None
    finally:
        await database.disconnect()


async def test_history_is_bounded_by_age(store_url: str, broker_url: str) -> None:
    database, seen = await open_db(store_url, broker_url, history_ttl=1)
    try:
        notes, broker = database.resources.notes, database.broker
        await notes.insert({"text": "old"})
        await eventually(lambda: len(seen.of("notes")) == 1, "the first change")
        before = Position(0, seen.of("notes")[0].epoch)  # type: ignore[arg-type]
        assert await broker.history("notes", before) is not None
        await asyncio.sleep(1.3)  # the retention under test is a wall-clock age
        await notes.insert({"text": "new"})
        await eventually(lambda: len(seen.of("notes")) == 2, "the second change")

        async def expired() -> bool:
            return await broker.history("notes", before) is None

        end = time.monotonic() + DEADLINE
        while not await expired():
            assert time.monotonic() < end, "the old change never left history"
            await asyncio.sleep(0.05)
        after_old = Position(seen.of("notes")[0].offset, before.epoch)  # type: ignore[arg-type]
        recent = await broker.history("notes", after_old)
        assert recent is not None and texts(recent) == ["new"]
    finally:
        await database.disconnect()


async def test_two_databases_on_one_broker_see_each_others_writes(
    store_url: str, shared_broker_url: str
) -> None:
    one, seen_one = await open_db(store_url, shared_broker_url)
    two, seen_two = await open_db(store_url, shared_broker_url)
    try:
        for i in range(5):
            await one.resources.notes.insert({"text": f"a{i}"})
            await two.resources.notes.insert({"text": f"b{i}"})
        await eventually(lambda: len(seen_one.of("notes")) == 10, "ten changes in one")
        await eventually(lambda: len(seen_two.of("notes")) == 10, "ten changes in two")
        in_one, in_two = seen_one.of("notes"), seen_two.of("notes")
        assert [(c.offset, c.epoch, c.record) for c in in_one] == [
            (c.offset, c.epoch, c.record) for c in in_two
        ]  # one stream order, the same everywhere
        offsets = [c.offset for c in in_one]
        assert offsets == sorted(set(offsets))
        assert sorted(texts(in_one)) == sorted(
            [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]
        )
        assert await one.broker.position("notes") == await two.broker.position("notes")
    finally:
        await one.disconnect()
        await two.disconnect()


WRITER = """
import asyncio, sys
from s3db_core import Database

async def main(store, broker, count):
    db = Database(store, broker=broker)
    await db.connect()
    notes = await db.create_resource("notes", {"text": "string|required"})
    for i in range(count):
        await notes.insert({"text": f"w{i}"})
    await db.disconnect()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_a_plain_writer_process_reaches_a_server_process(
    store_url: str, shared_broker_url: str
) -> None:
    database, seen = await open_db(store_url, shared_broker_url)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WRITER, store_url, shared_broker_url, "20",
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )  # fmt: skip
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        await eventually(lambda: len(seen.of("notes")) == 20, "the writer's twenty changes")
        assert texts(seen.of("notes")) == [f"w{i}" for i in range(20)]
        page = await database.resources.notes.list(limit=100)
        assert len(page.items) == 20  # the store is the source of truth, the broker the signal
    finally:
        await database.disconnect()


def test_broker_urls_pick_the_engine_and_reject_bad_options() -> None:
    assert isinstance(load_broker("local"), LocalBroker)
    assert isinstance(load_broker("local://"), LocalBroker)
    with pytest.raises(
        ValueError, match=r"unknown broker 'kafka' \(known: local, nats, redis, rediss\)"
    ):
        load_broker("kafka://host")
    with pytest.raises(ValueError, match="unknown broker option"):
        load_broker("local://?histroy_size=5")
    with pytest.raises(ValueError, match="history_size"):
        load_broker("local", {"history_size": 0})
    with pytest.raises(ValueError, match="prefix"):
        load_broker("local", {"prefix": "a b"})


async def test_a_stray_message_never_stops_delivery(store_url: str, shared_broker_url: str) -> None:
    database, seen = await open_db(store_url, shared_broker_url)
    try:
        await database.resources.notes.insert({"text": "before"})
        await eventually(lambda: len(seen.of("notes")) == 1, "the first change")
        broker = database.broker
        if shared_broker_url.startswith("redis"):
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(shared_broker_url.partition("?")[0])
            await client.xadd(broker.stream_key("notes"), {"junk": "1"})  # type: ignore[attr-defined]
            await client.aclose()
        else:
            import nats

            nc = await nats.connect(shared_broker_url.partition("?")[0])
            await nc.jetstream().publish(broker.subject("notes"), b"not json")  # type: ignore[attr-defined]
            await nc.close()
        await database.resources.notes.insert({"text": "after"})
        await eventually(lambda: len(seen.of("notes")) == 2, "the change after the stray one")
        assert texts(seen.of("notes")) == ["before", "after"]
    finally:
        await database.disconnect()
