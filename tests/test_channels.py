"""Channels on one process, over real sockets: join/leave, messages, presence, the guards and
every bound (name, channels per connection, members, sizes, depth, rates, anonymous joins), as
an attacker would probe them, and the custom-message and connection hooks.

The frames are checked from outside with the independent ``websockets`` library (ws_helpers).
"""

from __future__ import annotations

import asyncio
import inspect
import re
import uuid
from pathlib import Path

import pytest
from ws_helpers import JWT_AUTH, connect, make_token, serve

from s3db_core import Database, ForbiddenError, hookimpl
from s3db_ws_plugin import WebSocketPlugin, hookspecs
from s3db_ws_plugin.client import Backoff, Client, Forbidden, InvalidMessage

ROOM = {"room:*": {"presence": True, "events": ["message", "typing"]}}


def tenant_guard(user, ctx):
    return ctx.channel.split(":")[1] == user.tenantId


async def joined(client, channel, **fields):
    answer = await client.request({"type": "join", "channel": channel, **fields})
    assert answer["type"] == "channel:joined", answer
    return answer


async def next_frame(client, predicate, timeout=5.0):
    for i, frame in enumerate(client.inbox):
        if predicate(frame):
            return client.inbox.pop(i)
    while True:
        frame = await client.recv(timeout)
        if predicate(frame):
            return frame
        client.inbox.append(frame)


def channel_event(name, event):
    return lambda f: f.get("type") == "event" and f.get("channel") == name and f["event"] == event


async def test_join_message_presence_and_leave():
    async with (
        serve(auth=JWT_AUTH, channels=ROOM) as (_, plugin),
        connect(plugin.url, token=make_token("alice")) as a,
        connect(plugin.url, token=make_token("bob")) as b,
    ):
        first = await joined(a, "room:1", info={"name": "Alice"})
        assert [m["userId"] for m in first["members"]] == ["alice"]
        second = await joined(b, "room:1", info={"name": "Bob"})
        assert {m["userId"] for m in second["members"]} == {"alice", "bob"}
        added = await next_frame(a, channel_event("room:1", "member_added"))
        assert added["data"]["userId"] == "bob" and added["data"]["info"] == {"name": "Bob"}
        assert added["data"]["clientId"] == b.hello["clientId"]

        sent = await a.call("channel:message", channel="room:1", event="typing", data={"on": True})
        assert sent == {"type": "channel:sent", "requestId": sent["requestId"], "channel": "room:1"}
        got = await next_frame(b, channel_event("room:1", "typing"))
        assert got["data"] == {"on": True}
        assert got["from"] == {"clientId": a.hello["clientId"], "userId": "alice"}
        assert isinstance(got["timestamp"], int)
        # the sender does not get its own message (it did not join with self: true)
        assert not [f for f in await a.sync() if f.get("event") == "typing"]

        updated = await b.call("channel:update", channel="room:1", info={"name": "Bobby"})
        assert updated["member"]["info"] == {"name": "Bobby"}
        change = await next_frame(a, channel_event("room:1", "member_updated"))
        assert change["data"]["info"] == {"name": "Bobby"} and change["data"]["userId"] == "bob"
        assert await plugin.presence("room:1") == [
            {**first["members"][0], "info": {"name": "Alice"}},
            updated["member"],
        ]

        left = await b.call("leave", channel="room:1")
        assert left["type"] == "channel:left"
        removed = await next_frame(a, channel_event("room:1", "member_removed"))
        assert removed["data"]["userId"] == "bob"
        refused = await b.call("channel:message", channel="room:1", data="hi")
        assert refused["code"] == "FORBIDDEN"


async def test_self_true_receives_its_own_messages_and_default_event_is_message():
    async with (
        serve(auth=JWT_AUTH, channels={"chat:*": True}) as (_, plugin),
        connect(plugin.url, token=make_token("alice")) as a,
    ):
        answer = await joined(a, "chat:x", **{"self": True})
        assert "members" not in answer  # no presence on this pattern
        await a.call("channel:message", channel="chat:x", data=[1, 2])
        own = await next_frame(a, channel_event("chat:x", "message"))
        assert own["data"] == [1, 2] and own["from"]["userId"] == "alice"


async def test_user_id_comes_from_the_token_never_from_the_frame():
    async with (
        serve(auth=JWT_AUTH, channels=ROOM) as (_, plugin),
        connect(plugin.url, token=make_token("mallory")) as m,
        connect(plugin.url, token=make_token("bob")) as b,
    ):
        await joined(b, "room:1")
        await joined(m, "room:1", info={"userId": "admin"}, userId="admin", clientId="x")
        added = await next_frame(b, channel_event("room:1", "member_added"))
        assert added["data"]["userId"] == "mallory"
        assert added["data"]["clientId"] == m.hello["clientId"]
        await m.send(
            {"type": "channel:message", "channel": "room:1", "data": "hi",
             "from": {"userId": "admin", "clientId": b.hello["clientId"]}, "userId": "admin"}
        )  # fmt: skip
        got = await next_frame(b, channel_event("room:1", "message"))
        assert got["from"] == {"clientId": m.hello["clientId"], "userId": "mallory"}


async def test_names_patterns_and_event_names():
    async with (
        serve(auth=JWT_AUTH, channels=ROOM) as (_, plugin),
        connect(plugin.url, token=make_token("alice")) as a,
    ):
        assert (await a.call("join", channel="secret:1"))["code"] == "FORBIDDEN"
        for bad in ("room:1 2", "room:ü", "room:" + "x" * 124, "", 5, None):
            answer = await a.call("join", channel=bad)
            assert answer["code"] == "INVALID_MESSAGE", (bad, answer)
            assert answer["details"]["field"] == "channel"
        await joined(a, "room:" + "x" * 123)  # 128 characters
        await joined(a, "room:A-z_0.9@:x")
        for event in ("member_added", "delete", "x" * 65):
            answer = await a.call("channel:message", channel="room:A-z_0.9@:x", event=event, data=1)
            assert answer["code"] in ("FORBIDDEN", "INVALID_MESSAGE"), answer
        assert (await a.call("channel:message", channel="room:A-z_0.9@:x"))["code"] == "INVALID_MESSAGE"


async def test_join_guard_refusal_is_no_member_list_across_tenants():
    channels = {"tenant:*": {"presence": True, "join": tenant_guard, "max_members": 1}}
    async with (
        serve(auth=JWT_AUTH, channels=channels) as (_, plugin),
        connect(plugin.url, token=make_token("alice", tenantId="t1")) as a,
        connect(plugin.url, token=make_token("eve", tenantId="t2")) as e,
    ):
        await joined(a, "tenant:t1", info={"email": "alice@t1"})
        refused = await e.call("join", channel="tenant:t1")
        assert refused["type"] == "error" and refused["code"] == "FORBIDDEN"
        assert "members" not in refused and "alice" not in str(refused)
        # the same answer as a channel that does not exist (not even "full"): no oracle
        unknown = await e.call("join", channel="nothing:t1")
        assert unknown["code"] == refused["code"]
        assert refused["message"].replace("tenant:t1", "?") == unknown["message"].replace("nothing:t1", "?")
        # not a member: sending and updating are refused, and no event reaches eve
        assert (await e.call("channel:message", channel="tenant:t1", data=1))["code"] == "FORBIDDEN"
        assert (await e.call("channel:update", channel="tenant:t1", info={}))["code"] == "FORBIDDEN"
        await a.call("channel:update", channel="tenant:t1", info={"x": 1})
        assert not [f for f in await e.sync() if f["type"] == "event"]
        await joined(e, "tenant:t2")
        assert [m["userId"] for m in await plugin.presence("tenant:t1")] == ["alice"]
        async with connect(plugin.url, token=make_token("ann", tenantId="t1")) as ann:
            full = await ann.call("join", channel="tenant:t1")  # allowed in, but no room left
            assert full["code"] == "FORBIDDEN" and "full" in full["message"]


async def test_publish_guard_and_its_context():
    seen = []

    def publish(user, ctx):
        seen.append((user.id, ctx.channel, ctx["event"], ctx.data))
        return user.role == "host"

    async with (
        serve(auth=JWT_AUTH, channels={"stage:*": {"publish": publish}}) as (_, plugin),
        connect(plugin.url, token=make_token("guest")) as g,
        connect(plugin.url, token=make_token("host", role="host")) as h,
    ):
        await joined(g, "stage:1")
        await joined(h, "stage:1")
        assert (await g.call("channel:message", channel="stage:1", data="x"))["code"] == "FORBIDDEN"
        assert (await h.call("channel:message", channel="stage:1", data="y"))["type"] == "channel:sent"
        assert (await next_frame(g, channel_event("stage:1", "message")))["data"] == "y"
        assert seen == [("guest", "stage:1", "message", "x"), ("host", "stage:1", "message", "y")]


async def test_anonymous_joins_only_where_a_pattern_allows_them():
    channels = {"room:*": {"presence": True}, "lobby:*": {"anonymous": True, "presence": True}}
    async with (
        serve(channels=channels) as (_, plugin),
        connect(plugin.url) as anon,
    ):
        refused = await anon.call("join", channel="room:1")
        assert refused["code"] == "FORBIDDEN"
        unknown = await anon.call("join", channel="none:1")
        assert refused["message"].replace("room", "none") == unknown["message"]
        answer = await joined(anon, "lobby:1")
        assert answer["members"][0]["userId"] is None


async def test_bounds_channels_members_sizes_and_depth():
    channels = {"room:*": {"presence": True, "max_members": 2, "max_message_bytes": 100}}
    async with (
        serve(auth=JWT_AUTH, channels=channels, max_channels_per_connection=2) as (_, plugin),
        connect(plugin.url, token=make_token("a")) as a,
        connect(plugin.url, token=make_token("b")) as b,
        connect(plugin.url, token=make_token("c")) as c,
    ):
        await joined(a, "room:1")
        await joined(a, "room:2")
        again = await joined(a, "room:1")  # joining again is no new channel
        assert len(again["members"]) == 1
        too_many = await a.call("join", channel="room:3")
        assert too_many["code"] == "FORBIDDEN" and "limit 2" in too_many["message"]
        await joined(b, "room:1")
        full = await c.call("join", channel="room:1")
        assert full["code"] == "FORBIDDEN" and "full" in full["message"]

        big = await a.call("channel:message", channel="room:1", data="x" * 200)
        assert big["code"] == "INVALID_MESSAGE" and big["details"]["max"] == 100
        deep: object = 1
        for _ in range(100):
            deep = [deep]
        assert (await a.call("channel:message", channel="room:1", data=deep))["code"] == "INVALID_MESSAGE"
        info = await a.call("channel:update", channel="room:1", info={"bio": "x" * 1100})
        assert info["code"] == "INVALID_MESSAGE" and info["details"]["max"] == 1024
        assert (await c.call("join", channel="room:9", info={"x": "y" * 1100}))["code"] == "INVALID_MESSAGE"
        not_object = await a.call("channel:update", channel="room:1", info=[1])
        assert not_object["code"] == "INVALID_MESSAGE"
        assert (await a.call("ping"))["type"] == "pong"


async def test_message_and_update_rates_per_connection():
    async with (
        serve(auth=JWT_AUTH, channels=ROOM, channel_rate_limit={"messages": 5, "updates": 3}) as (
            _,
            plugin,
        ),
        connect(plugin.url, token=make_token("a")) as a,
        connect(plugin.url, token=make_token("b")) as b,
    ):
        await joined(a, "room:1")
        await joined(b, "room:1")
        for n in range(30):
            await a.send({"type": "channel:message", "channel": "room:1", "data": n, "requestId": n})
        answers = [await next_frame(a, lambda f, n=n: f.get("requestId") == n) for n in range(30)]
        limited = [f for f in answers if f.get("code") == "RATE_LIMITED"]
        assert 0 < len(limited) <= 25 and all(f["retryAfterMs"] > 0 for f in limited)
        delivered = [f for f in await b.sync() if f.get("event") == "message"]
        assert len(delivered) == 30 - len(limited)
        updates = [await a.call("channel:update", channel="room:1", info={"n": n}) for n in range(10)]
        assert any(u.get("code") == "RATE_LIMITED" for u in updates)
        assert (await a.call("ping"))["type"] == "pong"


async def test_join_leave_storm_is_bounded_and_leaves_nothing_behind():
    async with (
        serve(auth=JWT_AUTH, channels=ROOM, channel_rate_limit={"updates": 20}) as (_, plugin),
        connect(plugin.url, token=make_token("watcher")) as w,
    ):
        await joined(w, "room:1")
        async with connect(plugin.url, token=make_token("storm")) as s:
            for n in range(300):
                await s.send({"type": "join", "channel": f"room:{n % 3}", "requestId": f"j{n}"})
                await s.send({"type": "leave", "channel": f"room:{n % 3}", "requestId": f"l{n}"})
            frames = []
            while not any(f.get("requestId") == "l299" for f in frames):
                frames.append(await s.recv())
            assert any(f.get("code") == "RATE_LIMITED" for f in frames)
        # the storm's socket is gone: nothing of it is left
        for _ in range(100):
            if len(plugin.channels.of_connection) == 1:
                break
            await asyncio.sleep(0.05)
        assert set(plugin.channels.channels) == {"room:1"}
        assert [m["userId"] for m in await plugin.presence("room:1")] == ["watcher"]
        assert (await w.call("ping"))["type"] == "pong"


async def test_a_closed_connection_leaves_its_channels():
    async with (
        serve(auth=JWT_AUTH, channels=ROOM) as (_, plugin),
        connect(plugin.url, token=make_token("alice")) as a,
    ):
        await joined(a, "room:1")
        async with connect(plugin.url, token=make_token("bob")) as b:
            await joined(b, "room:1")
            await joined(b, "room:2")
            await next_frame(a, channel_event("room:1", "member_added"))
        removed = await next_frame(a, channel_event("room:1", "member_removed"))
        assert removed["data"]["userId"] == "bob"
        assert set(plugin.channels.channels) == {"room:1"}
        assert len(plugin.channels.of_connection) == 1


async def test_server_side_broadcast_and_presence():
    async with (
        serve(auth=JWT_AUTH, channels=ROOM) as (_, plugin),
        connect(plugin.url, token=make_token("alice")) as a,
    ):
        assert await plugin.presence("room:1") == []
        await joined(a, "room:1", info={"n": 1})
        await plugin.broadcast("room:1", "notice", {"text": "maintenance"})
        got = await next_frame(a, channel_event("room:1", "notice"))
        assert got["data"] == {"text": "maintenance"}
        assert got["from"] == {"clientId": None, "userId": None}
        await plugin.broadcast("room:2", "notice", 1)  # nobody there: nothing kept
        assert set(plugin.channels.channels) == {"room:1"}
        text = plugin.metrics.render().decode()
        assert "s3db_ws_channels 1.0" in text and "s3db_ws_channel_members 1.0" in text
        with pytest.raises(ValueError, match="no channels pattern"):
            await plugin.broadcast("other:1", "x", 1)
        with pytest.raises(ValueError, match="not a channel name"):
            await plugin.presence("room 1")
        with pytest.raises(ValueError, match="event name"):
            await plugin.broadcast("room:1", "member_removed", 1)


def test_channels_are_validated_at_construction():
    bad = [
        {"room:*": {"nope": 1}},
        {"room:*": {"join": "yes"}},
        {"room:*": {"events": "message"}},
        {"room:*": {"events": ["member_added"]}},
        {"room:*": {"max_members": 0}},
        {"room:*": {"max_message_bytes": True}},
        {"room:*": {"presence": "yes"}},
        {"room:*": {"history": 1001}},
        {"room:*": 5},
        {"": True},
    ]
    for channels in bad:
        with pytest.raises(ValueError):
            WebSocketPlugin(port=0, channels=channels)
    with pytest.raises(ValueError):
        WebSocketPlugin(port=0, channels={"a:*": True}, max_channels_per_connection=0)
    with pytest.raises(ValueError):
        WebSocketPlugin(port=0, channels={"a:*": True}, presence_timeout=0)
    with pytest.raises(ValueError):
        WebSocketPlugin(port=0, channels={"a:*": True}, channel_rate_limit={"bytes": 1})
    WebSocketPlugin(port=0, channels={"a:*": True, "b:*": {"join": lambda u, c: True}})


# -- hooks -----------------------------------------------------------------------------------------
class AppMessages:
    def __init__(self) -> None:
        self.connected: list[str] = []
        self.disconnected: list[tuple[str, int | None]] = []

    @hookimpl
    def s3db_ws_connected(self, connection):
        self.connected.append(getattr(connection.user, "id", None))

    @hookimpl
    async def s3db_ws_disconnected(self, connection, code):
        self.disconnected.append((getattr(connection.user, "id", None), code))

    @hookimpl
    async def s3db_ws_message(self, connection, message):
        kind = message["type"]
        if kind == "app:echo":
            return {"type": "app:echoed", "user": connection.user.id, "text": message.get("text")}
        if kind == "app:forbidden":
            raise ForbiddenError("not you")
        if kind == "app:broken":
            raise RuntimeError("secret detail")
        if kind == "app:bad":
            return "not a frame"
        return None


class Silent:
    @hookimpl
    def s3db_ws_message(self, connection, message):
        return None


async def test_custom_message_types_and_connection_hooks():
    app = AppMessages()
    async with serve(
        auth=JWT_AUTH, channels=ROOM, rate_limit={"max_requests": 12, "window_ms": 60000}
    ) as (db, plugin):
        await db.use_plugin(Silent())
        await db.use_plugin(app)
        async with connect(plugin.url, token=make_token("alice")) as a:
            echo = await a.call("app:echo", text="hi")
            assert echo == {"type": "app:echoed", "user": "alice", "text": "hi",
                            "requestId": echo["requestId"]}  # fmt: skip
            unknown = await a.call("app:nope")
            assert unknown["code"] == "UNKNOWN_MESSAGE_TYPE"
            assert (await a.call("nocolon"))["code"] == "UNKNOWN_MESSAGE_TYPE"
            assert (await a.call("app:forbidden"))["code"] == "FORBIDDEN"
            broken = await a.call("app:broken")
            assert broken["code"] == "INTERNAL_ERROR" and "secret" not in str(broken)
            assert broken["errorId"] in broken["message"]
            assert (await a.call("app:bad"))["code"] == "INTERNAL_ERROR"
            limited = [await a.call("app:echo") for _ in range(8)]
            assert limited[-1]["code"] == "RATE_LIMITED" and limited[-1]["retryAfterMs"] > 0
            assert app.connected == ["alice"]
        for _ in range(100):
            if app.disconnected:
                break
            await asyncio.sleep(0.05)
        assert app.disconnected == [("alice", 1000)]
        # before authenticating, a custom type is refused like any frame that needs a user
        async with connect(plugin.url, connected=False) as anon:
            assert (await anon.recv())["type"] == "auth_required"
            refused = await anon.call("app:echo")
            assert refused["code"] == "UNAUTHORIZED"
        assert app.connected == ["alice"]  # never connected: no hooks
        assert len(app.disconnected) == 1


def test_every_websocket_hookspec_is_documented_with_its_signature():
    root = Path(__file__).resolve().parent.parent
    docs = "\n".join(p.read_text() for p in [root / "README.md", *(root / "docs").glob("*.md")])
    for name, func in inspect.getmembers(hookspecs, inspect.isfunction):
        if not name.startswith("s3db_ws_"):
            continue
        signature = f"{name}({', '.join(inspect.signature(func).parameters)})"
        assert signature in docs, f"document {signature} in docs/"
    assert re.search(r"s3db_ws_message", docs)


# -- the Python client -------------------------------------------------------------------------------
FAST = Backoff(initial=0.05, maximum=0.3, jitter=0.0)


async def test_python_client_join_members_send_update_and_iterate():
    async with serve(auth=JWT_AUTH, channels=ROOM) as (_, plugin):
        async with (
            Client(plugin.url, token=make_token("alice")) as alice,
            Client(plugin.url, token=make_token("bob")) as bob,
        ):
            async with alice.join("room:1", info={"name": "Alice"}) as a_room:
                assert [m["userId"] for m in a_room.members.values()] == ["alice"]
                b_room = await bob.join("room:1", info={"name": "Bob"})
                assert {m["userId"] for m in b_room.members.values()} == {"alice", "bob"}
                added = await a_room.next(timeout=5)
                assert added.is_presence and added.event == "member_added"
                assert added.data["userId"] == "bob" and bob.client_id in a_room.members

                await b_room.send("typing", {"on": True})
                typing = await a_room.next(timeout=5)
                assert (typing.event, typing.data) == ("typing", {"on": True})
                assert typing.sender == {"clientId": bob.client_id, "userId": "bob"}

                member = await b_room.update({"name": "Bobby"})
                assert member["info"] == {"name": "Bobby"}
                updated = await a_room.next(timeout=5)
                assert updated.event == "member_updated"
                assert a_room.members[bob.client_id]["info"] == {"name": "Bobby"}

                with pytest.raises(InvalidMessage):
                    await b_room.send("typing", "x" * 20000)
                await b_room.leave()
                removed = await a_room.next(timeout=5)
                assert removed.event == "member_removed" and bob.client_id not in a_room.members
                with pytest.raises(StopAsyncIteration):
                    await b_room.__anext__()
            with pytest.raises(Forbidden):
                await alice.join("secret:1")
            assert plugin.channels.channels == {}


async def test_python_client_rejoins_after_a_reconnect():
    name = f"memory://rejoin-{uuid.uuid4().hex}"
    db = Database(name)
    await db.connect()
    options = {"auth": JWT_AUTH, "channels": ROOM, "heartbeat_interval": None}
    plugin = WebSocketPlugin(port=0, **options)
    await db.use_plugin(plugin)
    reconnected = asyncio.Event()
    try:
        async with (
            Client(plugin.url, token=make_token("alice"), backoff=FAST, request_timeout=2,
                   on_reconnect=lambda c: reconnected.set()) as alice,
            Client(plugin.url, token=make_token("bob"), backoff=FAST, request_timeout=2) as bob,
        ):  # fmt: skip
            room = await alice.join("room:1", info={"name": "Alice"})
            await bob.join("room:1")
            assert (await room.next(timeout=5)).event == "member_added"
            old_bob, old_alice = bob.client_id, alice.client_id
            await db.disconnect()  # every socket closes with 1001
            db = Database(name)
            await db.connect()
            plugin = WebSocketPlugin(port=plugin.port, **options)
            await db.use_plugin(plugin)
            await asyncio.wait_for(reconnected.wait(), 10)
            # both clients joined again by themselves; bob under a new client id
            for _ in range(200):
                if len(await plugin.presence("room:1")) == 2:
                    break
                await asyncio.sleep(0.05)
            assert {m["userId"] for m in await plugin.presence("room:1")} == {"alice", "bob"}
            seen = []
            while {("member_removed", old_bob), ("member_added", bob.client_id)} - set(seen):
                message = await room.next(timeout=5)
                seen.append((message.event, message.data["clientId"]))
            assert set(room.members) == {alice.client_id, bob.client_id}
            assert ("member_removed", old_alice) not in seen  # its own old id is no news
            await plugin.broadcast("room:1", "hello", 1)
            while (message := await room.next(timeout=5)).event != "hello":
                pass
            assert message.data == 1
    finally:
        await db.disconnect()


async def test_python_client_rejoin_refused_ends_the_iterator_with_the_error():
    name = f"memory://refused-{uuid.uuid4().hex}"
    allowed = {"alice"}

    def may_join(user, ctx):
        return user.id in allowed

    options = {"auth": JWT_AUTH, "heartbeat_interval": None,
               "channels": {"room:*": {"presence": True, "join": may_join}}}  # fmt: skip
    db = Database(name)
    await db.connect()
    plugin = WebSocketPlugin(port=0, **options)
    await db.use_plugin(plugin)
    reconnected = asyncio.Event()
    try:
        async with Client(plugin.url, token=make_token("alice"), backoff=FAST, request_timeout=2,
                          on_reconnect=lambda c: reconnected.set()) as alice:  # fmt: skip
            room = await alice.join("room:1")
            with pytest.raises(ValueError, match="already joined"):
                await alice.join("room:1")
            allowed.clear()  # alice loses access while the server restarts
            await db.disconnect()
            db = Database(name)
            await db.connect()
            plugin = WebSocketPlugin(port=plugin.port, **options)
            await db.use_plugin(plugin)
            await asyncio.wait_for(reconnected.wait(), 10)
            with pytest.raises(Forbidden):
                await room.next(timeout=5)
            assert await plugin.presence("room:1") == []
    finally:
        await db.disconnect()
