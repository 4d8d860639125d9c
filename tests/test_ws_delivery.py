"""Who receives which change: filtered subscriptions, records leaving a filter, one frame per
connection, event kinds, commit order, slow consumers (4408) and rate limiting."""

from __future__ import annotations

import asyncio
import socket
from contextlib import AsyncExitStack

import websockets
from ws_helpers import JWT_AUTH, TIMEOUT, Client, connect, make_token, notes_resource, serve

from s3db_core import Change
from s3db_ws_plugin.guards import ResourcePolicy
from s3db_ws_plugin.subscriptions import Subscription, SubscriptionRegistry


def titles(events):
    return [(e["event"], e["data"]["title"]) for e in events]


async def test_events_reach_exactly_the_matching_connections(ws_store_url):
    async with serve(notes_resource, url=ws_store_url, resources={"notes": True}) as (db, plugin):
        async with (
            connect(plugin.url) as room1,
            connect(plugin.url) as room2,
            connect(plugin.url) as everything,
            connect(plugin.url) as high_scores,
            connect(plugin.url) as room1_open,
        ):
            await room1.call("subscribe", resource="notes", filter={"roomId": "r1"})
            await room2.call("subscribe", resource="notes", filter={"roomId": "r2"})
            await everything.call("subscribe", resource="notes")
            await high_scores.call("subscribe", resource="notes", filter={"score": {"$gte": 10}})
            await room1_open.call(
                "subscribe", resource="notes", filter={"roomId": "r1", "status": "open"}
            )

            notes = db.resources.notes
            await notes.insert({"title": "a", "roomId": "r1", "score": 5})
            await notes.insert({"title": "b", "roomId": "r2", "score": 50})
            await notes.insert({"title": "c", "roomId": "r1", "status": "open"})
            await notes.insert({"title": "d"})

            assert titles(await room1.events()) == [("insert", "a"), ("insert", "c")]
            assert titles(await room2.events()) == [("insert", "b")]
            assert titles(await everything.events()) == [
                ("insert", "a"), ("insert", "b"), ("insert", "c"), ("insert", "d")
            ]
            assert titles(await high_scores.events()) == [("insert", "b")]
            assert titles(await room1_open.events()) == [("insert", "c")]


async def test_an_update_that_leaves_the_filter_is_delivered_once_then_nothing(ws_store_url):
    async with serve(notes_resource, url=ws_store_url, resources={"notes": True}) as (db, plugin):
        async with connect(plugin.url) as open_watch, connect(plugin.url) as closed_watch:
            await open_watch.call("subscribe", resource="notes", filter={"status": "open"})
            await closed_watch.call("subscribe", resource="notes", filter={"status": "closed"})
            notes = db.resources.notes
            rec = await notes.insert({"title": "t", "status": "open"})
            await notes.update(rec["id"], {"status": "closed"})  # leaves open, enters closed
            await notes.update(rec["id"], {"title": "t2"})  # only closed sees it
            await notes.delete(rec["id"])

            events = await open_watch.events()
            assert [(e["event"], e["data"]["status"]) for e in events] == [
                ("insert", "open"), ("update", "closed")
            ]
            events = await closed_watch.events()
            assert [(e["event"], e["data"]["status"]) for e in events] == [
                ("update", "closed"), ("update", "closed"), ("delete", "closed")
            ]


async def test_one_frame_per_connection_when_several_subscriptions_match():
    async with serve(notes_resource, resources={"notes": True}) as (db, plugin):
        async with connect(plugin.url) as client:
            await client.call("subscribe", resource="notes")
            await client.call("subscribe", resource="notes", filter={"roomId": "r1"})
            await client.call("subscribe", resource="notes", filter={"score": {"$gt": 1}})
            await db.resources.notes.insert({"title": "x", "roomId": "r1", "score": 3})
            assert len(await client.events()) == 1


async def test_subscribing_again_with_the_same_filter_replaces_the_subscription():
    async with serve(notes_resource, resources={"notes": True}) as (db, plugin):
        async with connect(plugin.url) as client:
            await client.call("subscribe", resource="notes", filter={"roomId": "r1"})
            again = await client.call(
                "subscribe", resource="notes", filter={"roomId": "r1"}, events=["delete"]
            )
            assert again["events"] == ["delete"] and len(plugin.registry) == 1
            await db.resources.notes.insert({"title": "x", "roomId": "r1"})
            assert await client.events() == []


async def test_event_kinds_from_the_resource_and_the_subscription():
    config = {"notes": {"events": ["insert", "delete"]}}
    async with serve(notes_resource, resources=config) as (db, plugin):
        async with connect(plugin.url) as all_kinds, connect(plugin.url) as deletes:
            sub = await all_kinds.call("subscribe", resource="notes")
            assert sub["events"] == ["insert", "delete"]
            sub = await deletes.call("subscribe", resource="notes", events=["delete", "update"])
            assert sub["events"] == ["delete"]
            rec = await db.resources.notes.insert({"title": "x"})
            await db.resources.notes.update(rec["id"], {"title": "y"})
            await db.resources.notes.delete(rec["id"])
            assert titles(await all_kinds.events()) == [("insert", "x"), ("delete", "y")]
            assert titles(await deletes.events()) == [("delete", "y")]


async def test_unsubscribe_by_filter_and_all():
    async with serve(notes_resource, resources={"notes": True}) as (db, plugin):
        async with connect(plugin.url) as client:
            await client.call("subscribe", resource="notes", filter={"roomId": "r1"})
            await client.call("subscribe", resource="notes", filter={"roomId": "r2"})
            reply = await client.call("unsubscribe", resource="notes", filter={"roomId": "r1"})
            assert reply == {"type": "unsubscribed", "requestId": reply["requestId"], "resource": "notes"}
            await db.resources.notes.insert({"title": "one", "roomId": "r1"})
            await db.resources.notes.insert({"title": "two", "roomId": "r2"})
            assert titles(await client.events()) == [("insert", "two")]
            await client.call("unsubscribe", resource="notes")
            assert len(plugin.registry) == 0
            await db.resources.notes.insert({"title": "three", "roomId": "r2"})
            assert await client.events() == []


async def test_events_arrive_in_commit_order():
    async with serve(notes_resource, resources={"notes": True}) as (db, plugin):
        async with connect(plugin.url) as client:
            await client.call("subscribe", resource="notes")
            rec = await db.resources.notes.insert({"title": "t", "score": 0})
            for i in range(1, 51):
                await db.resources.notes.update(rec["id"], {"score": i})
            events = []
            while len(events) < 51:
                events.append(await client.next_event())
            assert [e["data"]["score"] for e in events] == list(range(51))
            stamps = [e["timestamp"] for e in events]
            assert stamps == sorted(stamps)


async def test_disconnect_removes_subscriptions():
    async with serve(notes_resource, resources={"notes": True}) as (db, plugin):
        async with connect(plugin.url) as client:
            await client.call("subscribe", resource="notes", filter={"roomId": "r1"})
            await client.call("subscribe", resource="notes")
            assert len(plugin.registry) == 2
        for _ in range(100):
            if not plugin.connections:
                break
            await asyncio.sleep(0.01)
        assert len(plugin.registry) == 0 and not plugin.connections
        await db.resources.notes.insert({"title": "nobody listens", "roomId": "r1"})


async def test_a_slow_consumer_is_closed_4408_while_others_keep_receiving():
    big = "x" * 32_000
    count = 300  # ~9.6 MB: more than the kernel buffers between us and the stalled reader
    async with serve(notes_resource, resources={"notes": True}, max_queue_bytes=256 * 1024) as (db, plugin):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", plugin.port))
        # max_queue=1: the library stops reading the socket once one message is buffered.
        async with websockets.connect(plugin.url, sock=sock, max_queue=1, max_size=None) as slow_ws:
            slow = Client(slow_ws)
            assert (await slow.recv())["type"] == "connected"
            await slow.call("subscribe", resource="notes")
            async with connect(plugin.url) as fast:
                await fast.call("subscribe", resource="notes")
                received = []

                async def read_fast():
                    while len(received) < count:
                        received.append(await fast.next_event(timeout=TIMEOUT))

                reader = asyncio.create_task(read_fast())
                for i in range(count):
                    await db.resources.notes.insert({"title": str(i), "items": big})
                    # One event loop runs the server, this writer and both clients: pace the
                    # writer so that `fast` keeps up, as a healthy client would.
                    while len(received) < i - 4:
                        await asyncio.sleep(0.001)
                await asyncio.wait_for(reader, TIMEOUT)
                assert [e["data"]["title"] for e in received] == [str(i) for i in range(count)]
                assert (await fast.call("ping"))["type"] == "pong"

            # The stalled client now reads: what it got, then the 4408 close. Never a gap.
            code, frames = await slow.closed(timeout=TIMEOUT)
            assert code == 4408
            titles_seen = [f["data"]["title"] for f in frames if f["type"] == "event"]
            assert titles_seen == [str(i) for i in range(len(titles_seen))]
            assert len(titles_seen) < count


async def test_rate_limit_answers_rate_limited_and_skips_the_frame():
    rate = {"enabled": True, "maxRequests": 3, "windowMs": 60_000}
    async with serve(notes_resource, resources={"notes": True}, rate_limit=rate) as (db, plugin):
        async with connect(plugin.url) as client, connect(plugin.url) as other:
            for _ in range(3):
                assert (await client.call("ping"))["type"] == "pong"
            limited = await client.call("insert", resource="notes", data={"title": "x"})
            assert limited["code"] == "RATE_LIMITED" and limited["requestId"]
            assert 0 < limited["retryAfterMs"] <= 60_000
            await client.send("{broken")  # every frame counts, even invalid ones
            assert (await client.recv())["code"] == "RATE_LIMITED"
            assert await db.resources.notes.count() == 0
            # keyed by connection (the default): another socket has its own budget
            assert (await other.call("ping"))["type"] == "pong"


async def test_rate_limit_keyed_by_ip_is_shared_between_connections():
    rate = {"max_requests": 2, "window_ms": 60_000, "key": "ip"}
    async with serve(resources={}, rate_limit=rate) as (_, plugin):
        async with connect(plugin.url) as a, connect(plugin.url) as b:
            assert (await a.call("ping"))["type"] == "pong"
            assert (await b.call("ping"))["type"] == "pong"
            assert (await a.call("ping"))["code"] == "RATE_LIMITED"
            assert (await b.call("ping"))["code"] == "RATE_LIMITED"


class _FakeConnection:
    user = None


def test_index_checks_only_candidate_subscriptions():
    """10,000 subscriptions over 1,000 rooms: a change tests its room's few, not all of them."""
    registry = SubscriptionRegistry()
    policy = ResourcePolicy("msgs")
    calls = 0

    def counting(room):
        def predicate(record):
            nonlocal calls
            calls += 1
            return room is None or record.get("roomId") == room

        return predicate

    conns = [_FakeConnection() for _ in range(10_000)]
    for i, conn in enumerate(conns):
        room = f"room{i % 1000}"
        f = {"roomId": room}
        registry.add(Subscription(conn, "msgs", f, f, frozenset({"insert", "update"}), counting(room)))
    residual = _FakeConnection()
    registry.add(Subscription(residual, "msgs", {}, {}, frozenset({"insert", "update"}), counting(None)))

    change = Change("msgs", "insert", {"id": "1", "roomId": "room7"}, None, 0)
    receivers = registry.receivers(change, policy)
    assert len(receivers) == 11 and residual in receivers
    assert set(receivers) - {residual} == {conns[i] for i in range(7, 10_000, 1000)}
    assert calls == 11

    calls = 0
    move = Change("msgs", "update", {"id": "1", "roomId": "room8"}, {"id": "1", "roomId": "room7"}, 0)
    assert len(registry.receivers(move, policy)) == 21
    assert calls <= 2 * 21


def test_index_treats_booleans_and_numbers_as_different_values():
    registry = SubscriptionRegistry()
    policy = ResourcePolicy("r")
    flag, one = _FakeConnection(), _FakeConnection()
    registry.add(Subscription(flag, "r", {"v": True}, {"v": True}, frozenset({"insert"}), lambda r: r["v"] is True))
    registry.add(Subscription(one, "r", {"v": 1}, {"v": 1}, frozenset({"insert"}), lambda r: r["v"] == 1 and r["v"] is not True))
    assert registry.receivers(Change("r", "insert", {"v": True}, None, 0), policy) == [flag]
    assert registry.receivers(Change("r", "insert", {"v": 1}, None, 0), policy) == [one]


async def test_event_payload_is_serialized_once_per_change(monkeypatch):
    """The plugin encodes one payload per change, whatever the number of receivers."""
    from s3db_ws_plugin import plugin as plugin_module

    encoded = []
    real_encode = plugin_module.encode

    def spy(frame):
        if frame.get("type") == "event":
            encoded.append(frame)
        return real_encode(frame)

    monkeypatch.setattr(plugin_module, "encode", spy)
    async with serve(notes_resource, resources={"notes": True}) as (db, plugin):
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(connect(plugin.url)) for _ in range(20)]
            for client in clients:
                await client.call("subscribe", resource="notes")
            await db.resources.notes.insert({"title": "fan"})
            for client in clients:
                assert titles(await client.events()) == [("insert", "fan")]
    assert len(encoded) == 1


async def test_rate_limit_keyed_by_user_follows_the_user_across_connections():
    rate = {"max_requests": 2, "window_ms": 60_000, "key": "user"}
    async with serve(resources={}, rate_limit=rate, auth=JWT_AUTH) as (_, plugin):
        async with (
            connect(plugin.url, token=make_token("ann")) as ann1,
            connect(plugin.url, token=make_token("ann")) as ann2,
            connect(plugin.url, token=make_token("ben")) as ben,
        ):
            assert (await ann1.call("ping"))["type"] == "pong"
            assert (await ann2.call("ping"))["type"] == "pong"
            assert (await ann1.call("ping"))["code"] == "RATE_LIMITED"
            assert (await ben.call("ping"))["type"] == "pong"
