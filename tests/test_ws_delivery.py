"""Who receives which change: filtered subscriptions, records leaving a filter, commit order,
event kinds, one frame per connection, slow consumers (4408), rate limiting, and the
subscription index.

The tests of what a subscriber or a rate-limited user sees use the product's Python client and
the pytest plugin's fixtures (``s3db_connect``, ``s3db_client``, ``s3db_plugin_factory``), the
way the README tells users to test their apps. The tests in the "on the wire" section stay on
the independent ``websockets`` library because their subject is the frames themselves, which
the client hides by design: how many event frames one connection gets when several of its
subscriptions match (the client fans one frame out to each matching subscription), the exact
``subscribed``/``unsubscribed`` replies (the client merges equal subscriptions and exposes no
effective ``events``), unsubscribing everything on a resource, a socket that stops reading and
is closed with 4408, and invalid frames counting against the rate limit. The subscription index
is tested directly, without sockets.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
import websockets
from client_helpers import TIMEOUT, received
from ws_helpers import RawClient, connect, notes_resource, serve

from s3db_core import Change
from s3db_ws_plugin.client import RateLimited
from s3db_ws_plugin.guards import ResourcePolicy
from s3db_ws_plugin.subscriptions import Subscription, SubscriptionRegistry


@pytest.fixture
async def s3db_database(ws_database):
    """The notes resource (memory://, or each store of ``ws_store_url`` when a test asks)."""
    await notes_resource(ws_database)
    return ws_database


@pytest.fixture
def s3db_plugin_config():
    return {"resources": {"notes": True}}


@pytest.fixture
def watch(s3db_connect):
    """``sub = await watch(filter=..., events=...)``: a subscription to notes on a connection
    of its own (anonymous)."""

    async def watch(filter=None, events=None):
        client = await s3db_connect()
        return await client.subscribe("notes", filter=filter, events=events)

    return watch


def titles(events):
    return [(e.event, e.data["title"]) for e in events]


def raw_titles(frames):
    return [(f["event"], f["data"]["title"]) for f in frames]


# -- through the Python client -------------------------------------------------------------------
async def test_events_reach_exactly_the_matching_connections(ws_store_url, s3db_database, watch):
    room1 = await watch({"roomId": "r1"})
    room2 = await watch({"roomId": "r2"})
    everything = await watch()
    high_scores = await watch({"score": {"$gte": 10}})
    room1_open = await watch({"roomId": "r1", "status": "open"})

    notes = s3db_database.resources.notes
    await notes.insert({"title": "a", "roomId": "r1", "score": 5})
    await notes.insert({"title": "b", "roomId": "r2", "score": 50})
    await notes.insert({"title": "c", "roomId": "r1", "status": "open"})
    await notes.insert({"title": "d"})

    assert titles(await received(room1)) == [("insert", "a"), ("insert", "c")]
    assert titles(await received(room2)) == [("insert", "b")]
    assert titles(await received(everything)) == [
        ("insert", "a"),
        ("insert", "b"),
        ("insert", "c"),
        ("insert", "d"),
    ]
    assert titles(await received(high_scores)) == [("insert", "b")]
    assert titles(await received(room1_open)) == [("insert", "c")]


async def test_an_update_that_leaves_the_filter_is_delivered_once_then_nothing(
    ws_store_url, s3db_database, watch
):
    open_watch = await watch({"status": "open"})
    closed_watch = await watch({"status": "closed"})
    notes = s3db_database.resources.notes
    rec = await notes.insert({"title": "t", "status": "open"})
    await notes.update(rec["id"], {"status": "closed"})  # leaves open, enters closed
    await notes.update(rec["id"], {"title": "t2"})  # only closed sees it
    await notes.delete(rec["id"])

    assert [(e.event, e.data["status"]) for e in await received(open_watch)] == [
        ("insert", "open"),
        ("update", "closed"),
    ]
    assert [(e.event, e.data["status"]) for e in await received(closed_watch)] == [
        ("update", "closed"),
        ("update", "closed"),
        ("delete", "closed"),
    ]


async def test_events_arrive_in_commit_order(s3db_client, s3db_database):
    sub = await s3db_client.subscribe("notes")
    rec = await s3db_database.resources.notes.insert({"title": "t", "score": 0})
    for i in range(1, 51):
        await s3db_database.resources.notes.update(rec["id"], {"score": i})
    events = [await sub.next(timeout=TIMEOUT) for _ in range(51)]
    assert [e.data["score"] for e in events] == list(range(51))
    stamps = [e.timestamp for e in events]
    assert stamps == sorted(stamps)


async def test_disconnect_removes_subscriptions(s3db_server, s3db_connect, s3db_database):
    client = await s3db_connect()
    await client.subscribe("notes", filter={"roomId": "r1"})
    await client.subscribe("notes")
    assert len(s3db_server.registry) == 2
    await client.close()
    async with asyncio.timeout(TIMEOUT):
        while s3db_server.connections:
            await asyncio.sleep(0.01)
    assert len(s3db_server.registry) == 0 and not s3db_server.connections
    await s3db_database.resources.notes.insert({"title": "nobody listens", "roomId": "r1"})


async def test_event_payload_is_serialized_once_per_change(monkeypatch, s3db_database, watch):
    """The plugin encodes one payload per change, whatever the number of receivers."""
    from s3db_ws_plugin import fanout as plugin_module

    encoded = []
    real_encode = plugin_module.encode

    def spy(frame):
        if frame.get("type") == "event":
            encoded.append(frame)
        return real_encode(frame)

    monkeypatch.setattr(plugin_module, "encode", spy)
    subs = [await watch() for _ in range(20)]
    await s3db_database.resources.notes.insert({"title": "fan"})
    for sub in subs:
        assert titles(await received(sub)) == [("insert", "fan")]
    assert len(encoded) == 1


async def test_rate_limit_answers_rate_limited_and_skips_the_frame(
    s3db_database, s3db_plugin_factory, s3db_client_factory
):
    rate = {"enabled": True, "maxRequests": 3, "windowMs": 60_000, "key": "connection"}
    plugin = await s3db_plugin_factory(s3db_database, resources={"notes": True}, rate_limit=rate)
    client = await s3db_client_factory(plugin)
    for _ in range(3):
        await client.ping()
    with pytest.raises(RateLimited) as limited:
        await client.insert("notes", {"title": "x"})
    assert limited.value.request_id
    assert 0 < limited.value.retry_after_ms <= 60_000
    assert await s3db_database.resources.notes.count() == 0


async def test_rate_limit_defaults_to_per_ip_for_anonymous_clients(
    s3db_database, s3db_plugin_factory, s3db_client_factory
):
    rate = {"max_requests": 4, "window_ms": 60_000}
    plugin = await s3db_plugin_factory(s3db_database, resources={}, rate_limit=rate)
    a, b = await s3db_client_factory(plugin), await s3db_client_factory(plugin)
    with pytest.raises(RateLimited):  # a's budget is the address's: b's frames spend it too
        for _ in range(4):
            await a.ping()
            await b.ping()


async def test_rate_limit_keyed_by_connection_gives_each_socket_its_own_budget(
    s3db_database, s3db_plugin_factory, s3db_client_factory
):
    rate = {"max_requests": 1, "window_ms": 60_000, "key": "connection"}
    plugin = await s3db_plugin_factory(s3db_database, resources={}, rate_limit=rate)
    a, b = await s3db_client_factory(plugin), await s3db_client_factory(plugin)
    assert await a.ping()
    assert await b.ping()
    with pytest.raises(RateLimited):
        await a.ping()


async def test_rate_limit_defaults_to_per_user_across_sockets_and_reconnects(
    s3db_database, s3db_plugin_factory, s3db_client_factory, s3db_token, s3db_jwt_secret
):
    rate = {"max_requests": 2, "window_ms": 60_000}  # no key: per user once authenticated
    auth = {"required": True, "drivers": [{"driver": "jwt", "config": {"secret": s3db_jwt_secret}}]}
    plugin = await s3db_plugin_factory(s3db_database, resources={}, rate_limit=rate, auth=auth)
    ann1 = await s3db_client_factory(plugin, s3db_token("ann"))
    assert await ann1.ping()
    await ann1.close()
    ann2 = await s3db_client_factory(plugin, s3db_token("ann"))  # reconnected
    assert await ann2.ping()
    with pytest.raises(RateLimited):
        await ann2.ping()
    ben = await s3db_client_factory(plugin, s3db_token("ben"))  # same IP, another user
    assert await ben.ping()


async def test_rate_limit_keyed_by_user_and_ip_applies_both(
    s3db_database, s3db_plugin_factory, s3db_client_factory, s3db_token, s3db_jwt_secret
):
    rate = {"max_requests": 2, "window_ms": 60_000, "key": ["user", "ip"]}
    auth = {"required": True, "drivers": [{"driver": "jwt", "config": {"secret": s3db_jwt_secret}}]}
    plugin = await s3db_plugin_factory(s3db_database, resources={}, rate_limit=rate, auth=auth)
    # Many accounts from one address share the address's budget...
    ann = await s3db_client_factory(plugin, s3db_token("ann"))
    ben = await s3db_client_factory(plugin, s3db_token("ben"))
    assert await ann.ping()
    assert await ben.ping()
    with pytest.raises(RateLimited):
        await ann.ping()


async def test_rate_limit_keyed_by_ip_is_shared_between_connections(
    s3db_database, s3db_plugin_factory, s3db_client_factory
):
    rate = {"max_requests": 2, "window_ms": 60_000, "key": "ip"}
    plugin = await s3db_plugin_factory(s3db_database, resources={}, rate_limit=rate)
    a = await s3db_client_factory(plugin)
    b = await s3db_client_factory(plugin)
    assert await a.ping()
    assert await b.ping()
    with pytest.raises(RateLimited):
        await a.ping()
    with pytest.raises(RateLimited):
        await b.ping()


async def test_rate_limit_keyed_by_user_follows_the_user_across_connections(
    s3db_database, s3db_plugin_factory, s3db_client_factory, s3db_token, s3db_jwt_secret
):
    rate = {"max_requests": 2, "window_ms": 60_000, "key": "user"}
    auth = {"required": True, "drivers": [{"driver": "jwt", "config": {"secret": s3db_jwt_secret}}]}
    plugin = await s3db_plugin_factory(s3db_database, resources={}, rate_limit=rate, auth=auth)
    ann1 = await s3db_client_factory(plugin, s3db_token("ann"))
    ann2 = await s3db_client_factory(plugin, s3db_token("ann"))
    ben = await s3db_client_factory(plugin, s3db_token("ben"))
    assert await ann1.ping()
    assert await ann2.ping()
    with pytest.raises(RateLimited):
        await ann1.ping()
    assert await ben.ping()


# -- on the wire, with the independent `websockets` library -------------------------------------
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
            assert raw_titles(await all_kinds.events()) == [("insert", "x"), ("delete", "y")]
            assert raw_titles(await deletes.events()) == [("delete", "y")]


async def test_unsubscribe_by_filter_and_all():
    async with serve(notes_resource, resources={"notes": True}) as (db, plugin):
        async with connect(plugin.url) as client:
            await client.call("subscribe", resource="notes", filter={"roomId": "r1"})
            await client.call("subscribe", resource="notes", filter={"roomId": "r2"})
            reply = await client.call("unsubscribe", resource="notes", filter={"roomId": "r1"})
            assert reply == {
                "type": "unsubscribed",
                "requestId": reply["requestId"],
                "resource": "notes",
            }
            await db.resources.notes.insert({"title": "one", "roomId": "r1"})
            await db.resources.notes.insert({"title": "two", "roomId": "r2"})
            assert raw_titles(await client.events()) == [("insert", "two")]
            await client.call("unsubscribe", resource="notes")
            assert len(plugin.registry) == 0
            await db.resources.notes.insert({"title": "three", "roomId": "r2"})
            assert await client.events() == []


async def test_a_slow_consumer_is_closed_4408_while_others_keep_receiving():
    big = "x" * 32_000
    count = 300  # ~9.6 MB: more than the kernel buffers between us and the stalled reader
    async with serve(notes_resource, resources={"notes": True}, max_queue_bytes=256 * 1024) as (
        db,
        plugin,
    ):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", plugin.port))
        # max_queue=1: the library stops reading the socket once one message is buffered.
        async with websockets.connect(plugin.url, sock=sock, max_queue=1, max_size=None) as slow_ws:
            slow = RawClient(slow_ws)
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


async def test_invalid_frames_count_against_the_rate_limit():
    rate = {"enabled": True, "maxRequests": 3, "windowMs": 60_000}
    async with serve(notes_resource, resources={"notes": True}, rate_limit=rate) as (db, plugin):
        async with connect(plugin.url) as client:
            for _ in range(3):
                await client.send("{broken")
                assert (await client.recv())["code"] == "INVALID_JSON"
            await client.send("{broken")  # over the limit: not even parsed
            assert (await client.recv())["code"] == "RATE_LIMITED"
            limited = await client.call("insert", resource="notes", data={"title": "x"})
            assert limited["code"] == "RATE_LIMITED" and limited["requestId"]
            assert 0 < limited["retryAfterMs"] <= 60_000
            assert await db.resources.notes.count() == 0


# -- the subscription index, without sockets -----------------------------------------------------
class _FakeConnection:
    user = None

    def on_close(self, cleanup):  # the registry hands the connection its clean-up
        pass


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
        registry.add(
            Subscription(conn, "msgs", f, f, frozenset({"insert", "update"}), counting(room))
        )
    residual = _FakeConnection()
    registry.add(
        Subscription(residual, "msgs", {}, {}, frozenset({"insert", "update"}), counting(None))
    )

    change = Change("msgs", "insert", {"id": "1", "roomId": "room7"}, None, 0)
    receivers = registry.deliveries(change, policy)[0]
    assert len(receivers) == 11 and residual in receivers
    assert set(receivers) - {residual} == {conns[i] for i in range(7, 10_000, 1000)}
    assert calls == 11

    calls = 0
    move = Change(
        "msgs", "update", {"id": "1", "roomId": "room8"}, {"id": "1", "roomId": "room7"}, 0
    )
    assert len(registry.deliveries(move, policy)[0]) == 21
    assert calls <= 2 * 21


def test_index_treats_booleans_and_numbers_as_different_values():
    registry = SubscriptionRegistry()
    policy = ResourcePolicy("r")
    flag, one = _FakeConnection(), _FakeConnection()
    registry.add(
        Subscription(
            flag, "r", {"v": True}, {"v": True}, frozenset({"insert"}), lambda r: r["v"] is True
        )
    )
    registry.add(
        Subscription(
            one,
            "r",
            {"v": 1},
            {"v": 1},
            frozenset({"insert"}),
            lambda r: r["v"] == 1 and r["v"] is not True,
        )
    )
    assert registry.deliveries(Change("r", "insert", {"v": True}, None, 0), policy)[0] == [flag]
    assert registry.deliveries(Change("r", "insert", {"v": 1}, None, 0), policy)[0] == [one]
