"""A resume replays net changes, never past states; every read check on the snapshot path; byte
bounds on replays, snapshots and history. On the local broker, Redis and NATS, over real sockets.

A member added to a private room must not receive, through ``since: {offset: 0, ...}``, what was
deleted or edited before they joined: a replay shows what exists now, exactly as a ``list``
does, while a client that stayed connected still receives every change live.
"""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from ws_helpers import JWT_AUTH, connect, make_token

from s3db_core import Database
from s3db_ws_plugin import WebSocketPlugin

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


# -- a chat: rooms with members, messages readable by the room's members ----------------------------
async def chat_resources(db: Database) -> None:
    await db.create_resource(
        "rooms",
        {"name": "string|required", "isPrivate": "boolean|default:false", "members": "json"},
    )
    await db.create_resource(
        "messages",
        {"roomId": "string|required", "userId": "string|required", "content": "string|required"},
        timestamps=True,
    )


def chat_policy(db: Database) -> dict[str, Any]:
    async def member(user: Any, room_id: Any) -> bool:
        room = await db.resources.rooms.get_or_none(room_id) if isinstance(room_id, str) else None
        return room is not None and (not room["isPrivate"] or user.id in room["members"])

    async def subscribe(user: Any, filter: dict[str, Any]) -> bool | dict[str, Any]:
        return await member(user, filter.get("roomId")) and {"roomId": filter["roomId"]}

    async def list_(user: Any, ctx: Any) -> bool | dict[str, Any]:
        return await member(user, ctx.filter.get("roomId")) and {"roomId": ctx.filter["roomId"]}

    async def create(user: Any, data: dict[str, Any]) -> bool:
        data["userId"] = user.id
        return await member(user, data.get("roomId"))

    async def own(user: Any, ctx: Any) -> bool:
        return ctx.record is None or ctx.record["userId"] == user.id

    return {
        "messages": {
            "guard": {
                "subscribe": subscribe,
                "list": list_,
                "create": create,
                "update": own,
                "delete": own,
            }
        }
    }


@asynccontextmanager
async def chat(broker: str, **options: Any) -> AsyncIterator[tuple[Database, WebSocketPlugin]]:
    db = Database(f"memory://net-{uuid.uuid4().hex[:12]}", broker=broker)
    await db.connect()
    try:
        await chat_resources(db)
        plugin = WebSocketPlugin(
            port=0, heartbeat_interval=None, auth=JWT_AUTH, resources=chat_policy(db), **options
        )
        await db.use_plugin(plugin)
        yield db, plugin
    finally:
        await db.disconnect()


async def test_a_member_added_later_resumes_from_offset_0_and_sees_only_what_exists(broker_url):
    async with chat(broker_url) as (db, plugin):
        rooms = db.resources.rooms
        room = await rooms.insert({"name": "plans", "isPrivate": True, "members": ["alice", "bob"]})
        where = {"roomId": room["id"]}
        async with (
            connect(plugin.url, token=make_token("alice")) as alice,
            connect(plugin.url, token=make_token("bob")) as bob,
        ):
            assert (await bob.call("subscribe", resource="messages", filter=where))["type"] == (
                "subscribed"
            )
            post = await alice.call(
                "insert", resource="messages", data={**where, "content": "the secret one"}
            )
            gone = post["data"]["id"]
            assert (await alice.call("delete", resource="messages", id=gone))["type"] == "deleted"
            post = await alice.call("insert", resource="messages", data={**where, "content": "draft"})
            kept = post["data"]["id"]
            await alice.call("update", resource="messages", id=kept, data={"content": "final"})
            # Bob stayed connected: every change reached him live, in order.
            live = [await bob.next_event() for _ in range(4)]
            assert [(e["event"], e["data"].get("content")) for e in live] == [
                ("insert", "the secret one"),
                ("delete", "the secret one"),
                ("insert", "draft"),
                ("update", "final"),
            ]
        await rooms.update(room["id"], {"members": ["alice", "bob", "eve"]})

        async with connect(plugin.url, token=make_token("eve")) as eve:
            page = await eve.call("list", resource="messages", filter=where)
            assert [m["content"] for m in page["data"]] == ["final"]
            first = await eve.call("subscribe", resource="messages", filter=where)
            epoch = first["position"]["epoch"]
            await eve.call("unsubscribe", resource="messages")
            reply = await eve.call(
                "subscribe", resource="messages", filter=where, since={"offset": 0, "epoch": epoch}
            )
            assert reply["recovered"] is True
            replayed = await eve.events()
            assert [(e["event"], e["data"]) for e in replayed] == [("insert", page["data"][0])]
            text = str(replayed)
            assert "the secret one" not in text and "draft" not in text and gone not in text


# -- the net change of each record, through every delivery rule -------------------------------------
async def notes_db(broker: str) -> Database:
    db = Database(f"memory://net-{uuid.uuid4().hex[:12]}", broker=broker)
    await db.connect()
    await db.create_resource(
        "notes",
        {
            "title": "string|required",
            "status": "string|optional",
            "roomId": "string|optional",
            "password": "string|optional",
        },
    )
    return db


async def test_each_record_replays_its_net_change_in_the_order_of_its_latest_change(broker_url):
    def visible(user: Any, record: dict[str, Any]) -> bool:
        return record.get("status") != "hidden"

    db = await notes_db(broker_url)
    try:
        plugin = WebSocketPlugin(
            port=0,
            heartbeat_interval=None,
            resources={"notes": {"protected": ["password"], "read": visible}},
        )
        await db.use_plugin(plugin)
        notes = db.resources.notes
        edited = await notes.insert({"title": "edited v1", "password": "pw"})
        removed = await notes.insert({"title": "removed"})
        hidden = await notes.insert({"title": "hidden later"})
        reborn = await notes.insert({"title": "reborn v1"})
        untouched = await notes.insert({"title": "untouched"})
        position = (await db.broker.position("notes")).to_dict()
        # After the position:
        await notes.update(edited["id"], {"title": "edited v2"})
        brief = await notes.insert({"title": "brief life"})
        await notes.delete(removed["id"])
        await notes.update(hidden["id"], {"status": "hidden", "title": "hidden plan"})
        await notes.delete(brief["id"])
        await notes.delete(reborn["id"])
        await notes.insert({"id": reborn["id"], "title": "reborn v2"})
        fresh = await notes.insert({"title": "fresh v1"})
        await notes.update(fresh["id"], {"title": "fresh v2"})
        await notes.update(edited["id"], {"title": "edited v3"})

        async with connect(plugin.url) as client:
            reply = await client.call("subscribe", resource="notes", since=position)
            assert reply["recovered"] is True
            got = await client.events()
        shown = [(e["event"], e["data"].get("id"), e["data"].get("title")) for e in got]
        assert shown == [
            ("delete", removed["id"], None),
            ("leave", hidden["id"], None),
            ("update", reborn["id"], "reborn v2"),
            ("insert", fresh["id"], "fresh v2"),
            ("update", edited["id"], "edited v3"),
        ]
        assert got[0]["data"] == {"id": removed["id"]} and got[1]["data"] == {"id": hidden["id"]}
        assert all("password" not in e["data"] for e in got)
        offsets = [e["offset"] for e in got]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
        for text in ("brief life", "edited v2", "fresh v1", "hidden plan", untouched["title"]):
            assert text not in str(got)
    finally:
        await db.disconnect()


async def test_a_replay_filters_the_net_change_by_the_subscription(broker_url):
    """A record that left the client's selection arrives as ``update`` (it may hold it); one
    that was never in it, at the position or now, is not replayed at all."""
    db = await notes_db(broker_url)
    try:
        plugin = WebSocketPlugin(port=0, heartbeat_interval=None, resources={"notes": {}})
        await db.use_plugin(plugin)
        notes = db.resources.notes
        moved = await notes.insert({"title": "moved", "roomId": "r1"})
        elsewhere = await notes.insert({"title": "elsewhere", "roomId": "r2"})
        position = (await db.broker.position("notes")).to_dict()
        await notes.update(moved["id"], {"roomId": "r2"})
        await notes.update(elsewhere["id"], {"roomId": "r1"})
        await notes.update(elsewhere["id"], {"roomId": "r2", "title": "passed through"})
        await notes.delete(elsewhere["id"])
        async with connect(plugin.url) as client:
            reply = await client.call(
                "subscribe", resource="notes", filter={"roomId": "r1"}, since=position
            )
            assert reply["recovered"] is True
            got = await client.events()
        assert [(e["event"], e["data"]["id"], e["data"]["roomId"]) for e in got] == [
            ("update", moved["id"], "r2")
        ]
    finally:
        await db.disconnect()


# -- subscribe {snapshot: true} runs every read check a list runs ------------------------------------
async def test_a_snapshot_never_returns_more_than_a_list_by_the_same_user(broker_url):
    def admins(user: Any, ctx: Any) -> bool:
        return user is not None and user.role == "admin"

    db = await notes_db(broker_url)
    try:
        plugin = WebSocketPlugin(
            port=0,
            heartbeat_interval=None,
            auth=JWT_AUTH,
            resources={"notes": {"guard": {"list": admins, "get": admins}}},
        )
        await db.use_plugin(plugin)
        for n in range(3):
            await db.resources.notes.insert({"title": f"n{n}", "password": "pw"})
        async with connect(plugin.url, token=make_token("mallory")) as mallory:
            listed = await mallory.call("list", resource="notes")
            assert listed["type"] == "error" and listed["code"] == "FORBIDDEN"
            snap = await mallory.call("subscribe", resource="notes", snapshot=True)
            assert snap["type"] == "error" and snap["code"] == "FORBIDDEN", snap
            # Refused before it took effect: no subscription is left behind.
            await db.resources.notes.insert({"title": "later"})
            assert await mallory.events() == []
        async with connect(plugin.url, token=make_token("ada", role="admin")) as ada:
            snap = await ada.call("subscribe", resource="notes", snapshot=True)
            assert [r["title"] for r in snap["data"]] == ["n0", "n1", "n2", "later"]
    finally:
        await db.disconnect()


async def test_a_snapshot_applies_the_list_guards_override_the_subscribe_guard_and_the_read_rule(
    broker_url,
):
    def own_only(user: Any, ctx: Any) -> dict[str, Any]:
        return {"owner": user.id}  # a list shows only the caller's notes

    def room_r1(user: Any, filter: dict[str, Any]) -> dict[str, Any]:
        return {"roomId": "r1"}

    def not_hidden(user: Any, record: dict[str, Any]) -> bool:
        return record.get("status") != "hidden"

    db = Database(f"memory://net-{uuid.uuid4().hex[:12]}", broker=broker_url)
    await db.connect()
    try:
        await db.create_resource(
            "notes",
            {"title": "string", "owner": "string", "roomId": "string", "status": "string|optional"},
        )
        plugin = WebSocketPlugin(
            port=0,
            heartbeat_interval=None,
            auth=JWT_AUTH,
            resources={
                "notes": {
                    "guard": {"list": own_only, "subscribe": room_r1},
                    "read": not_hidden,
                }
            },
        )
        await db.use_plugin(plugin)
        notes = db.resources.notes
        for owner in ("bob", "eve"):
            for room in ("r1", "r2"):
                await notes.insert({"title": f"{owner}-{room}", "owner": owner, "roomId": room})
            await notes.insert(
                {"title": f"{owner}-hidden", "owner": owner, "roomId": "r1", "status": "hidden"}
            )
        async with connect(plugin.url, token=make_token("bob")) as bob:
            # Own notes (the list guard), in r1 (the subscribe guard), not hidden (the read rule).
            listed = await bob.call("list", resource="notes")
            assert [r["title"] for r in listed["data"]] == ["bob-r1", "bob-r2"]
            snap = await bob.call("subscribe", resource="notes", snapshot=True)
            assert snap["type"] == "subscribed", snap
            assert [r["title"] for r in snap["data"]] == ["bob-r1"]
            # Asking for eve's notes: a list still shows bob's own, the snapshot nothing more.
            asked = {"owner": "eve"}
            listed = await bob.call("list", resource="notes", filter=asked)
            assert [r["title"] for r in listed["data"]] == ["bob-r1", "bob-r2"]
            snap = await bob.call("subscribe", resource="notes", filter=asked, snapshot=True)
            assert snap["type"] == "subscribed" and snap["data"] == [], snap
    finally:
        await db.disconnect()


# -- bounded by bytes ----------------------------------------------------------------------------------
HISTORY_BYTES = 64 * 1024


async def test_history_is_bounded_by_bytes_per_resource(broker_url):
    """40 changes of ~8 KB with room for 1,000 by count: what a resume can still read back,
    and what the broker holds, stays within 64 KiB (the newest change always stays)."""
    from broker_helpers import Collector, eventually

    from s3db_core import Position
    from s3db_core.brokers.base import encode_change

    db = Database(
        f"memory://net-{uuid.uuid4().hex[:12]}",
        broker=with_option(broker_url, history_max_bytes=HISTORY_BYTES),
    )
    collector = Collector()
    await db.use_plugin(collector)
    await db.connect()
    try:
        await db.create_resource("notes", {"title": "string|required"})
        small = await db.create_resource("small", {"title": "string|required"})
        for n in range(40):
            await db.resources.notes.insert({"title": f"{n:02d}" + "x" * 8000})
            await small.insert({"title": f"s{n}"})
        await eventually(lambda: len(collector.of("notes")) == 40, "every change read back")
        offsets = [c.offset for c in collector.of("notes")]
        epoch = collector.of("notes")[-1].epoch
        assert epoch is not None
        window = None
        for since in [offsets[0] - 1, *offsets]:
            window = await db.broker.history("notes", Position(since, epoch))
            if window is not None:
                break
        assert window is not None and window[-1].offset == offsets[-1]
        kept = sum(len(encode_change(c)) for c in window)
        assert HISTORY_BYTES // 2 < kept <= HISTORY_BYTES, (kept, len(window))
        # A resource's budget is its own: the small one keeps all of its 40 changes.
        first = collector.of("small")[0]
        assert first.offset is not None
        assert first.offset is not None and first.epoch is not None
        since = Position(first.offset - 1, first.epoch)
        assert len(await db.broker.history("small", since) or []) == 40
        # What the broker itself holds, measured by the broker's server where there is one.
        broker = db.broker
        if hasattr(broker, "memory_usage"):  # Redis: MEMORY USAGE of every key of the history
            assert await broker.memory_usage("notes") < 3 * HISTORY_BYTES
        held: list[int] = []

        async def measure() -> bool:
            held.append(await broker.history_bytes("notes"))
            return held[-1] <= HISTORY_BYTES

        end = asyncio.get_running_loop().time() + 10
        while not await measure():  # NATS purges in the background, right after the append
            assert asyncio.get_running_loop().time() < end, held
            await asyncio.sleep(0.02)
        assert held[-1] > HISTORY_BYTES // 2
    finally:
        await db.disconnect()


async def test_a_replay_over_its_byte_budget_answers_recovered_false(broker_url):
    db = await notes_db(broker_url)
    try:
        plugin = WebSocketPlugin(
            port=0, heartbeat_interval=None, resources={"notes": {}}, replay_max_bytes=8192
        )
        await db.use_plugin(plugin)
        notes = db.resources.notes
        position = (await db.broker.position("notes")).to_dict()
        for n in range(3):
            await notes.insert({"title": f"{n}" + "y" * 1000})
        middle = (await db.broker.position("notes")).to_dict()
        for n in range(10):
            await notes.insert({"title": f"{n}" + "z" * 1000, "status": "pick" if n == 1 else "no"})
        current = (await db.broker.position("notes")).to_dict()
        async with connect(plugin.url) as client:
            reply = await client.call("subscribe", resource="notes", since=position)
            assert reply["recovered"] is False and reply["position"] == current
            assert await client.events() == []
            await client.call("unsubscribe", resource="notes")
            few = await client.call(
                "subscribe", resource="notes", filter={"status": "pick"}, since=middle
            )
            assert few["recovered"] is True
            assert [e["data"]["title"][:2] for e in await client.events()] == ["1z"]
    finally:
        await db.disconnect()


async def test_a_replay_never_takes_more_than_half_the_send_queue():
    """Else a client could be closed as a slow consumer by its own replay, at every reconnect."""
    db = await notes_db("local")
    try:
        plugin = WebSocketPlugin(
            port=0, heartbeat_interval=None, resources={"notes": {}}, max_queue_bytes=16384
        )
        await db.use_plugin(plugin)
        position = (await db.broker.position("notes")).to_dict()
        for n in range(10):
            await db.resources.notes.insert({"title": f"{n}" + "q" * 1000})
        async with connect(plugin.url) as client:
            reply = await client.call("subscribe", resource="notes", since=position)
            assert reply["recovered"] is False
            assert await client.events() == []
    finally:
        await db.disconnect()


async def test_a_snapshot_of_large_records_costs_no_more_memory_than_a_list():
    """40 records of 500 KB (20 MB): a snapshot reads them a few at a time under the list's byte
    budget, exactly like a list, instead of the whole page at once."""
    import tracemalloc

    db = await notes_db("local")
    try:
        plugin = WebSocketPlugin(port=0, heartbeat_interval=None, resources={"notes": {}})
        await db.use_plugin(plugin)
        for n in range(40):
            await db.resources.notes.insert({"title": f"{n:02d}" + "w" * 500_000})
        async with connect(plugin.url) as client:
            await client.call("ping")

            async def peak_of(type: str, **fields: Any) -> tuple[dict[str, Any], int]:
                tracemalloc.start()
                try:
                    answer = await client.call(type, resource="notes", **fields)
                    return answer, tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()

            listed, list_peak = await peak_of("list")
            snap, snap_peak = await peak_of("subscribe", snapshot=True)
        assert snap["type"] == "subscribed" and snap["cursor"]
        assert len(snap["data"]) == len(listed["data"]) <= 3
        assert snap_peak < 1.5 * list_peak, (snap_peak, list_peak)
    finally:
        await db.disconnect()
