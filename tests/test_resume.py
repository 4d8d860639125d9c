"""Positions, resume and snapshot-then-stream, as a subscriber sees them, on every broker.

Frame-level checks (exact replies, bounds) speak raw WebSocket; what an app sees on reconnect
goes through the product's Python client.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from ws_helpers import connect, notes_resource

from s3db_core import Change, Database
from s3db_ws_plugin import WebSocketPlugin
from s3db_ws_plugin.client import Backoff, Client

FAST = Backoff(initial=0.02, maximum=0.1, jitter=0.0)
# Engines whose module exists on this branch (all three once the broker engines are merged).
ENGINES = [
    e for e in ("local", "redis", "nats") if importlib.util.find_spec(f"s3db_core.brokers.{e}")
]


@pytest.fixture(params=ENGINES)
def broker_url(request: pytest.FixtureRequest) -> str:
    if request.param == "local":
        return "local"
    base = request.getfixturevalue(f"{request.param}_url")
    return f"{base}?prefix=t{uuid.uuid4().hex[:12]}"


def with_option(url: str, **options: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    if url == "local":
        return f"local://?{query}"
    return f"{url}{'&' if '?' in url else '?'}{query}"


async def eventually(check: Callable[[], bool], what: str, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@asynccontextmanager
async def serve(
    broker: str, store: str | None = None, **options: Any
) -> AsyncIterator[tuple[Database, WebSocketPlugin]]:
    db = Database(store or f"memory://resume-{uuid.uuid4().hex[:12]}", broker=broker)
    await db.connect()
    try:
        await notes_resource(db)
        options.setdefault("resources", {"notes": {"protected": ["password"]}})
        plugin = WebSocketPlugin(port=0, heartbeat_interval=None, **options)
        await db.use_plugin(plugin)
        yield db, plugin
    finally:
        await db.disconnect()


async def next_events(client: Any, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    return [await client.next_event(timeout) for _ in range(count)]


# -- positions and replay ------------------------------------------------------------------------
async def test_resume_since_replays_exactly_what_was_missed_through_the_filter(broker_url):
    async with serve(broker_url) as (db, plugin):
        notes = db.resources.notes
        async with connect(plugin.url) as first:
            reply = await first.call("subscribe", resource="notes", filter={"roomId": "r1"})
            start = reply["position"]
            assert start["offset"] == 0 and isinstance(start["epoch"], str)
            await notes.insert({"title": "seen", "roomId": "r1"})
            seen = await first.next_event()
            assert (seen["offset"], seen["epoch"], seen["version"]) == (1, start["epoch"], 1)
        # Disconnected: three changes in r1 (one with a protected field), one elsewhere.
        a = await notes.insert({"title": "a", "roomId": "r1", "password": "hunter2"})
        await notes.insert({"title": "other", "roomId": "r2"})
        await notes.update(a["id"], {"title": "a2"})
        b = await notes.insert({"title": "b", "roomId": "r1"})
        async with connect(plugin.url) as again:
            since = {"offset": seen["offset"], "epoch": seen["epoch"]}
            reply = await again.call(
                "subscribe", resource="notes", filter={"roomId": "r1"}, since=since
            )
            assert reply["recovered"] is True and reply["position"] == since
            replayed = await next_events(again, 2)
            # Net changes: "a" did not exist at the position, so it arrives once, as it is now.
            assert [(e["event"], e["data"]["title"], e["version"]) for e in replayed] == [
                ("insert", "a2", 2),
                ("insert", "b", 1),
            ]
            assert [e["offset"] for e in replayed] == [4, 5]
            assert all("password" not in e["data"] for e in replayed)
            # ... then live, with nothing repeated.
            await notes.delete(b["id"])
            live = await again.next_event()
            assert (live["event"], live["offset"], live["version"]) == ("delete", 6, 1)
            assert await again.events() == []


async def test_not_recovered_when_the_epoch_differs_or_history_is_gone(broker_url):
    async with serve(with_option(broker_url, history_size=3)) as (db, plugin):
        for n in range(6):
            await db.resources.notes.insert({"title": f"n{n}"})
        async with connect(plugin.url) as client:
            other = await client.call(
                "subscribe", resource="notes", since={"offset": 1, "epoch": "another-epoch"}
            )
            assert other["recovered"] is False
            current = other["position"]
            assert current["offset"] == 6 and current["epoch"] != "another-epoch"
            gone = await client.call(
                "subscribe",
                resource="notes",
                filter={"roomId": "x"},
                since={"offset": 1, "epoch": current["epoch"]},
            )
            assert gone["recovered"] is False and gone["position"] == current
            kept = await client.call(
                "subscribe",
                resource="notes",
                filter={"title": "n5"},
                since={"offset": 4, "epoch": current["epoch"]},
            )
            assert kept["recovered"] is True
            assert [e["data"]["title"] for e in await client.events()] == ["n5"]


async def test_replay_uses_the_guards_effective_filter(broker_url):
    def own_room_only(user, filter):
        return {"roomId": "mine"}

    resources = {"notes": {"protected": ["password"], "guard": {"subscribe": own_room_only}}}
    async with serve(broker_url, resources=resources) as (db, plugin):
        position = await db.broker.position("notes")
        await db.resources.notes.insert({"title": "theirs", "roomId": "theirs"})
        await db.resources.notes.insert({"title": "mine", "roomId": "mine"})
        async with connect(plugin.url) as client:
            reply = await client.call(
                "subscribe", resource="notes", filter={}, since=position.to_dict()
            )
            assert reply["recovered"] is True and reply["filter"] == {"roomId": "mine"}
            assert [e["data"]["title"] for e in await client.events()] == ["mine"]


async def test_replay_applies_the_read_rule_and_sends_leave(broker_url):
    def visible(user, record):
        return record.get("status") != "hidden"

    resources = {"notes": {"protected": ["password"], "read": visible}}
    async with serve(broker_url, resources=resources) as (db, plugin):
        notes = db.resources.notes
        a = await notes.insert({"title": "a", "password": "x"})
        position = await db.broker.position("notes")
        await notes.update(a["id"], {"status": "hidden", "title": "secret plan"})
        await notes.insert({"title": "b", "status": "hidden"})
        await notes.insert({"title": "c"})
        async with connect(plugin.url) as client:
            reply = await client.call("subscribe", resource="notes", since=position.to_dict())
            assert reply["recovered"] is True
            got = [await client.next_event() for _ in range(2)]
            assert [(e["event"], e["data"]) for e in got] == [
                ("leave", {"id": a["id"]}),
                ("insert", got[1]["data"]),
            ]
            assert got[1]["data"]["title"] == "c" and "secret plan" not in str(got)
            assert "password" not in got[1]["data"]
            assert await client.events() == []


async def test_replay_then_live_under_concurrent_writes_has_no_gap_and_no_duplicate(broker_url):
    async with serve(broker_url) as (db, plugin):
        notes = db.resources.notes
        for n in range(20):
            await notes.insert({"title": f"before-{n}"})
        stop = asyncio.Event()

        async def writer() -> None:
            n = 0
            while not stop.is_set():
                await notes.insert({"title": f"during-{n}"})
                n += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(writer())
        try:
            async with connect(plugin.url) as client:
                epoch = (await db.broker.position("notes")).epoch
                reply = await client.call(
                    "subscribe", resource="notes", since={"offset": 5, "epoch": epoch}
                )
                assert reply["recovered"] is True
                mark = (await db.broker.position("notes")).offset
                while (await db.broker.position("notes")).offset < mark + 20:
                    await asyncio.sleep(0.005)  # the writer runs on past the replay
                stop.set()
                await task
                last = (await db.broker.position("notes")).offset
                events = []
                while not events or events[-1]["offset"] < last:
                    events.append(await client.next_event())
                assert [e["offset"] for e in events] == list(range(6, last + 1))
        finally:
            stop.set()
            await task


# -- snapshot then stream --------------------------------------------------------------------------
async def test_snapshot_then_stream_with_concurrent_writes_misses_and_repeats_nothing(broker_url):
    async with serve(broker_url) as (db, plugin):
        notes = db.resources.notes
        for n in range(30):
            await notes.insert({"title": f"old-{n}", "roomId": "r1", "password": "x"})
        written: list[str] = []
        stop = asyncio.Event()

        async def writer() -> None:
            n = 0
            while not stop.is_set():
                written.append((await notes.insert({"title": f"new-{n}", "roomId": "r1"}))["id"])
                n += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(writer())
        async with connect(plugin.url) as client:
            await eventually(lambda: len(written) >= 3, "a few concurrent writes")
            reply = await client.call(
                "subscribe", resource="notes", filter={"roomId": "r1"}, snapshot=True, limit=1000
            )
            await eventually(lambda: len(written) >= 40, "more writes after the snapshot")
            stop.set()
            await task
            assert reply["type"] == "subscribed" and reply["cursor"] is None
            position = reply["position"]
            snapshot_ids = [r["id"] for r in reply["data"]]
            assert all("password" not in r for r in reply["data"])
            events: list[dict[str, Any]] = []
            everything = set(written)
            while not everything <= set(snapshot_ids) | {e["data"]["id"] for e in events}:
                events.append(await client.next_event())
            event_ids = [e["data"]["id"] for e in events]
            assert len(event_ids) == len(set(event_ids)), "an event was repeated"
            assert not set(event_ids) & set(snapshot_ids), (
                position,
                [(e["offset"], e["event"]) for e in events if e["data"]["id"] in snapshot_ids],
            )
            assert all(e["offset"] > position["offset"] for e in events)
            assert await client.events() == []


async def test_snapshot_pages_with_a_cursor(broker_url):
    async with serve(broker_url) as (db, plugin):
        for n in range(5):
            await db.resources.notes.insert({"title": f"n{n}"})
        async with connect(plugin.url) as client:
            reply = await client.call("subscribe", resource="notes", snapshot=True, limit=2)
            assert [r["title"] for r in reply["data"]] == ["n0", "n1"] and reply["cursor"]
            page = await client.call("list", resource="notes", cursor=reply["cursor"], limit=10)
            assert [r["title"] for r in page["data"]] == ["n2", "n3", "n4"]


# -- record versions ----------------------------------------------------------------------------
async def test_an_older_version_is_never_sent_after_a_newer_one(broker_url):
    async with serve(broker_url) as (db, plugin):
        record = await db.resources.notes.insert({"title": "v1"})
        async with connect(plugin.url) as client:
            await client.call("subscribe", resource="notes")
            after = {**record, "title": "v3"}
            # Two writers raced: version 3 reached the stream before version 2.
            for version, title in ((3, "v3"), (2, "v2")):
                change = Change("notes", "update", {**record, "title": title}, record, 0, version)
                await db.broker.publish(change)
            await db.resources.notes.update(record["id"], {"title": "v4"})  # version 2 in the store
            await db.broker.publish(
                Change("notes", "update", {**after, "title": "v5"}, after, 0, 5)
            )
            got = [await client.next_event() for _ in range(2)]
            assert [(e["data"]["title"], e["version"]) for e in got] == [("v3", 3), ("v5", 5)]
            assert await client.events() == []


# -- bounds ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields, field",
    [
        ({"since": {"offset": -1, "epoch": "e"}}, "since"),
        ({"since": {"offset": 2**63, "epoch": "e"}}, "since"),
        ({"since": {"offset": True, "epoch": "e"}}, "since"),
        ({"since": {"offset": "1", "epoch": "e"}}, "since"),
        ({"since": {"offset": 1, "epoch": "e" * 129}}, "since"),
        ({"since": {"offset": 1}}, "since"),
        ({"since": [1, "e"]}, "since"),
        ({"snapshot": "yes"}, "snapshot"),
        ({"snapshot": True, "limit": 1001}, "limit"),
        ({"snapshot": True, "since": {"offset": 1, "epoch": "e"}}, "since"),
    ],
)
async def test_since_and_snapshot_are_bounded(fields, field):
    async with serve("local") as (_, plugin), connect(plugin.url) as client:
        reply = await client.call("subscribe", resource="notes", **fields)
        assert reply["type"] == "error" and reply["code"] == "INVALID_MESSAGE"
        assert reply["details"]["field"] == field
        assert (await client.call("ping"))["type"] == "pong"


# -- the Python client ------------------------------------------------------------------------------
async def test_the_python_client_resumes_by_itself_after_a_dropped_socket(broker_url):
    async with serve(broker_url) as (db, plugin):
        notes = db.resources.notes
        reconnected = asyncio.Event()
        client = Client(plugin.url, backoff=Backoff(initial=0.3, maximum=0.3, jitter=0.0),
                        on_reconnect=lambda c: reconnected.set())  # fmt: skip
        async with client:
            sub = await client.subscribe("notes", filter={"roomId": "r1"})
            await notes.insert({"title": "one", "roomId": "r1"})
            assert (await sub.next(timeout=5)).data["title"] == "one"
            for conn in list(plugin.connections):
                conn.transport.abort()  # the network drops the socket
            await eventually(lambda: not client.connected, "the client to notice")
            for n in range(3):
                await notes.insert({"title": f"missed-{n}", "roomId": "r1"})
            await notes.insert({"title": "elsewhere", "roomId": "r2"})
            await asyncio.wait_for(reconnected.wait(), 5)
            await notes.insert({"title": "live", "roomId": "r1"})
            titles = [(await sub.next(timeout=5)).data["title"] for _ in range(4)]
            assert titles == ["missed-0", "missed-1", "missed-2", "live"]
            assert sub.recovered is True and sub.position.offset == 6
            with pytest.raises(TimeoutError):
                await sub.next(timeout=0.2)


async def test_the_python_client_snapshot_and_since_for_apps(broker_url):
    async with serve(broker_url) as (db, plugin), Client(plugin.url) as client:
        notes = db.resources.notes
        await notes.insert({"title": "a"})
        sub = await client.subscribe("notes", snapshot=True)
        assert [r["title"] for r in sub.snapshot] == ["a"] and sub.cursor is None
        await notes.insert({"title": "b"})
        assert (await sub.next(timeout=5)).data["title"] == "b"
        saved = sub.position
        await sub.close()
        await notes.insert({"title": "c"})
        again = await client.subscribe("notes", since=saved)
        assert again.recovered is True
        assert (await again.next(timeout=5)).data["title"] == "c"
        reloads: list[Any] = []
        lost = await client.subscribe(
            "notes", filter={"title": "x"}, since={"offset": 1, "epoch": "gone"},
            on_reload=reloads.append,
        )  # fmt: skip
        event = await lost.next(timeout=5)
        assert event.is_reload and reloads == [lost] and lost.recovered is False


async def test_a_subscribe_storm_shares_broker_reads_and_every_subscriber_is_served(broker_url):
    """Many clients (re)subscribing at once, as after a server restart, each need the stream
    position: the broker is asked a bounded number of times and nobody gets an error."""
    async with serve(broker_url) as (db, plugin):
        clients = [Client(plugin.url) for _ in range(150)]
        try:
            await asyncio.gather(*(c.connect() for c in clients))
            subs = await asyncio.gather(*(c.subscribe("notes") for c in clients))
            for since in (None, (await db.broker.position("notes")).to_dict()):
                if since is not None:  # the same storm, resuming
                    subs = await asyncio.gather(
                        *(c.subscribe("notes", filter={"n": {"$exists": False}}, since=since) for c in clients)
                    )  # fmt: skip
                await db.resources.notes.insert({"title": "to everyone"})
                got = await asyncio.gather(*(s.next(timeout=10) for s in subs))
                assert {e.data["title"] for e in got} == {"to everyone"}
        finally:
            await asyncio.gather(*(c.close() for c in clients))
