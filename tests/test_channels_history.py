"""Channel history (``history: N``): ``join {since}`` replays the messages after a position,
with the same offset/epoch rules as resources, on every broker (local, Redis, NATS) and across
two ``s3db serve`` processes sharing Redis or NATS; the Python client resumes by itself. Every
server, socket and broker is real; nothing reaches the store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from test_channels_scaleout import channel_event, next_frame, servers
from ws_helpers import JWT_AUTH, connect, make_token

from s3db_core import Database
from s3db_ws_plugin import WebSocketPlugin
from s3db_ws_plugin.client import Backoff, Client

HISTORY = {"hist:*": {"history": 5}, "room:*": {"presence": True}}


@asynccontextmanager
async def node(broker: str, **options: Any) -> AsyncIterator[WebSocketPlugin]:
    db = Database(f"memory://h-{uuid.uuid4().hex[:12]}", broker=broker)
    await db.connect()
    try:
        options.setdefault("channels", HISTORY)
        plugin = WebSocketPlugin(port=0, auth=JWT_AUTH, heartbeat_interval=None, **options)
        await db.use_plugin(plugin)
        yield plugin
    finally:
        await db.disconnect()


def message(name: str) -> Any:
    return lambda f: f.get("type") == "event" and f.get("channel") == name and "offset" in f


async def test_join_since_replays_what_was_missed_then_continues_live(broker_url):
    async with (
        node(broker_url) as plugin,
        connect(plugin.url, token=make_token("bob")) as bob,
    ):
        plugin.db.storage.requests.reset()
        await bob.call("join", channel="hist:1")
        async with connect(plugin.url, token=make_token("alice")) as alice:
            joined = await alice.call("join", channel="hist:1")
            assert "recovered" not in joined and set(joined["position"]) == {"offset", "epoch"}
            for n in range(2):
                await bob.call("channel:message", channel="hist:1", data=n)
            seen = [await next_frame(alice, message("hist:1")) for _ in range(2)]
            assert [f["data"] for f in seen] == [0, 1]
            assert seen[0]["offset"] < seen[1]["offset"] and seen[0]["offset"] > joined["position"]["offset"]
            assert seen[0]["epoch"] == seen[1]["epoch"] == joined["position"]["epoch"]
            assert seen[0]["from"]["userId"] == "bob"
            # bob does not get his own messages back
            assert not [f for f in await bob.sync() if f.get("event") == "message"]
        last = {"offset": seen[-1]["offset"], "epoch": seen[-1]["epoch"]}
        for n in range(2, 5):
            await bob.call("channel:message", channel="hist:1", data=n)
        async with connect(plugin.url, token=make_token("alice")) as alice:
            again = await alice.call("join", channel="hist:1", since=last)
            assert again["recovered"] is True and again["position"] == last
            replayed = [await next_frame(alice, message("hist:1")) for _ in range(3)]
            assert [f["data"] for f in replayed] == [2, 3, 4]
            assert [f["offset"] for f in replayed] == sorted({f["offset"] for f in replayed})
            await bob.call("channel:message", channel="hist:1", data=5)
            live = await next_frame(alice, message("hist:1"))
            assert live["data"] == 5 and live["offset"] > replayed[-1]["offset"]
            assert not [f for f in await alice.sync() if f.get("event") == "message"]  # once each

            # a position history no longer reaches (history: 5), or another epoch: reload
            for n in range(6, 14):
                await bob.call("channel:message", channel="hist:1", data=n)
            await alice.call("leave", channel="hist:1")
            too_old = await alice.call("join", channel="hist:1", since=last)
            assert too_old["recovered"] is False and too_old["position"]["offset"] > last["offset"]
            await alice.call("leave", channel="hist:1")
            other = await alice.call("join", channel="hist:1", since={**last, "epoch": "other"})
            assert other["recovered"] is False
            await alice.call("leave", channel="hist:1")
            ahead = await alice.call("join", channel="hist:1",
                                     since={**last, "offset": last["offset"] + 10**6})  # fmt: skip
            assert ahead["recovered"] is False
            await alice.sync()
            # nothing was replayed by the refused resumes
            assert not [f for f in alice.inbox if f.get("event") == "message"]
        assert plugin.db.storage.requests.snapshot() == {}  # history lives in the broker only


async def test_replays_are_bounded_by_bytes_and_since_is_validated(broker_url):
    channels = {"hist:*": {"history": 100, "history_max_bytes": 4096}}
    async with (
        node(broker_url, channels=channels) as plugin,
        connect(plugin.url, token=make_token("bob")) as bob,
        connect(plugin.url, token=make_token("alice")) as alice,
    ):
        await bob.call("join", channel="hist:big")
        start = (await alice.call("join", channel="hist:big"))["position"]
        await alice.call("leave", channel="hist:big")
        for _ in range(6):  # 6 x ~1 KiB: more than the 4 KiB a replay may carry
            await bob.call("channel:message", channel="hist:big", data="x" * 1000)
        answer = await alice.call("join", channel="hist:big", since=start)
        assert answer["recovered"] is False
        await alice.call("leave", channel="hist:big")
        for bad in ({"offset": -1, "epoch": "e"}, {"offset": 1}, "0", {"offset": 1, "epoch": "e" * 500}):
            refused = await alice.call("join", channel="hist:big", since=bad)
            assert refused["type"] == "error" and refused["code"] == "INVALID_MESSAGE", refused
        # a channel without history answers no position; since is harmless there
        no_history = await alice.call("join", channel="other:1", since=start)
        assert no_history["type"] == "error" and no_history["code"] == "FORBIDDEN"


def test_history_options_are_checked():
    for bad in ({"history": -1}, {"history": 1001}, {"history": True},
                {"history": 5, "history_max_bytes": 10}):  # fmt: skip
        with pytest.raises(ValueError, match="history"):
            WebSocketPlugin(port=0, channels={"hist:*": bad})


async def test_two_processes_share_one_sequence_per_channel(tmp_path, shared_broker_url):
    async with servers(tmp_path, shared_broker_url, 2) as (one, two):
        async with (
            connect(one.url, token=make_token("alice")) as alice,
            connect(two.url, token=make_token("bob")) as bob,
            connect(two.url, token=make_token("carol")) as carol,
        ):
            await alice.call("join", channel="hist:x")
            await bob.call("join", channel="hist:x")
            await carol.call("join", channel="hist:x")
            await alice.call("channel:message", channel="hist:x", data="a1")
            await bob.call("channel:message", channel="hist:x", data="b1")
            await alice.call("channel:message", channel="hist:x", data="a2")
            got = [await next_frame(carol, message("hist:x")) for _ in range(3)]
            assert [f["data"] for f in got] == ["a1", "b1", "a2"]
            offsets = [f["offset"] for f in got]
            assert offsets == sorted(set(offsets)) and len({f["epoch"] for f in got}) == 1
            # alice (process one) heard bob's message with the same offset carol did
            from_bob = await next_frame(alice, channel_event("hist:x", "message"))
            assert from_bob["data"] == "b1" and from_bob["offset"] == offsets[1]
            position = {"offset": offsets[2], "epoch": got[2]["epoch"]}
        # carol is gone; messages go on from both processes; she resumes on the other one
        async with (
            connect(one.url, token=make_token("alice")) as alice,
            connect(two.url, token=make_token("bob")) as bob,
        ):
            await alice.call("join", channel="hist:x")
            await bob.call("join", channel="hist:x")
            await alice.call("channel:message", channel="hist:x", data="a3")
            await bob.call("channel:message", channel="hist:x", data="b2")
            async with connect(one.url, token=make_token("carol")) as carol:
                answer = await carol.call("join", channel="hist:x", since=position)
                assert answer["recovered"] is True
                replayed = [await next_frame(carol, message("hist:x")) for _ in range(2)]
                assert [f["data"] for f in replayed] == ["a3", "b2"]


async def test_python_client_rejoins_from_its_position_and_surfaces_a_reload(redis_url):
    broker = f"{redis_url}?prefix=t{uuid.uuid4().hex[:12]}"
    fast = Backoff(initial=0.05, maximum=0.3, jitter=0.0)
    store = f"memory://hc-{uuid.uuid4().hex[:12]}"
    async with node(broker) as other:  # a second server process on the same Redis
        db = Database(store, broker=broker)
        await db.connect()
        options = {"auth": JWT_AUTH, "channels": HISTORY, "heartbeat_interval": None}
        plugin = WebSocketPlugin(port=0, **options)
        await db.use_plugin(plugin)
        reconnected = asyncio.Event()
        try:
            async with Client(plugin.url, token=make_token("alice"), backoff=fast,
                              request_timeout=2, on_reconnect=lambda c: reconnected.set()) as alice:  # fmt: skip
                room = await alice.join("hist:c")
                assert room.position is not None
                await other.broadcast("hist:c", "note", 1)
                assert (await room.next(timeout=5)).data == 1
                await db.disconnect()  # alice's server goes away; the channel goes on
                await other.broadcast("hist:c", "note", 2)
                await other.broadcast("hist:c", "note", 3)
                db = Database(store, broker=broker)
                await db.connect()
                plugin = WebSocketPlugin(port=plugin.port, **options)
                await db.use_plugin(plugin)
                await asyncio.wait_for(reconnected.wait(), 10)
                assert [(await room.next(timeout=5)).data for _ in range(2)] == [2, 3]
                await asyncio.sleep(0)
                assert room.recovered is True
                await other.broadcast("hist:c", "note", 4)
                assert (await room.next(timeout=5)).data == 4

                # gone for longer than history reaches: a reload, then what is new
                reconnected.clear()
                await db.disconnect()
                for n in range(10):
                    await other.broadcast("hist:c", "note", 100 + n)
                db = Database(store, broker=broker)
                await db.connect()
                plugin = WebSocketPlugin(port=plugin.port, **options)
                await db.use_plugin(plugin)
                await asyncio.wait_for(reconnected.wait(), 10)
                reload = await room.next(timeout=5)
                assert reload.event == "reload" and room.recovered is False
                await other.broadcast("hist:c", "note", 200)
                assert (await room.next(timeout=5)).data == 200
        finally:
            await db.disconnect()


async def test_an_unreachable_broker_makes_sending_an_error_never_a_hang():
    from test_channels_scaleout import free_port

    broker = f"redis://127.0.0.1:{free_port()}/0?connect_timeout=0.5&publish_timeout=0.2"
    async with (
        node(broker) as plugin,
        connect(plugin.url, token=make_token("bob")) as bob,
    ):
        joined = await bob.call("join", channel="hist:1", timeout=10)
        assert joined["type"] == "channel:joined" and "position" not in joined
        resumed = await bob.call("join", channel="hist:1", since={"offset": 1, "epoch": "e"},
                                 timeout=10)  # fmt: skip
        assert resumed["recovered"] is False
        sent = await bob.call("channel:message", channel="hist:1", data=1, timeout=10)
        assert sent["type"] == "error" and sent["code"] == "INTERNAL_ERROR", sent
        with pytest.raises(ConnectionError):
            await plugin.broadcast("hist:1", "note", 1)
        # channels without history still work on this one process
        await bob.call("join", channel="room:1")
        assert (await bob.call("channel:message", channel="room:1", data=2))["type"] == "channel:sent"


async def test_what_waits_for_a_replay_is_bounded_like_the_send_queue():
    async with (
        node("local", max_queue_bytes=64 * 1024) as plugin,
        connect(plugin.url, token=make_token("alice")) as alice,
        connect(plugin.url, token=make_token("bob")) as bob,
    ):
        reads = plugin.channels._reads  # every history read slot taken: alice's join waits
        for _ in range(16):
            await reads.acquire()
        try:
            await alice.send({"type": "join", "channel": "hist:1", "requestId": "j"})
            for _ in range(500):
                channel = plugin.channels.channels.get("hist:1")
                if channel is not None and channel.local:
                    break
                await asyncio.sleep(0.01)
            for _ in range(12):  # ~96 KiB arrive while her join waits: more than her queue
                await plugin.broadcast("hist:1", "big", "x" * 8000)
            code, _ = await alice.closed(timeout=10)
            assert code == 4408
        finally:
            for _ in range(16):
                reads.release()
        # the others go on
        await bob.call("join", channel="hist:1")
        assert (await bob.call("channel:message", channel="hist:1", data=1))["type"] == "channel:sent"
