"""Changes of different resources reach every process in the order they were committed.

``plugin.recheck`` (and ``RecheckOnAccessChange``) revoke a subscription when the record that
granted it changes; that is only a hard cut if the revocation is handled before any change
committed after it, whatever resource it belongs to. The dependent resource (messages) is
defined, and first written, before the resource granting access (rooms), so a reader that
dispatched stream by stream in the order it learned of them would hand the later message over
first.

The server is made busy (a slow ``s3db_change`` hook, as under load) while the two writes
commit, so its reader meets both in one read of the broker: the case where the order across
resources is the reader's to keep.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from broker_helpers import Collector, eventually
from ws_helpers import JWT_AUTH, connect, make_token

from s3db_core import Change, Database, hookimpl
from s3db_ws_plugin import RecheckOnAccessChange, WebSocketPlugin

TIMEOUT = 10.0


class Gate:
    """Holds the process's change dispatch on a ``gate`` change until released: the server is
    busy while the writes of the test commit."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    @hookimpl
    async def s3db_change(self, change: Change) -> None:
        if change.resource == "gate":
            self.entered.set()
            await asyncio.wait_for(self.release.wait(), TIMEOUT)


async def define(db: Database) -> None:
    # The dependent resource first.
    await db.create_resource("messages", {"roomId": "string|required", "text": "string"})
    await db.create_resource("rooms", {"members": "array|items:string|default:[]"})
    await db.create_resource("gate", {"n": "number|optional"})


@asynccontextmanager
async def writer(db: Database) -> AsyncIterator[Database]:
    """Another publisher on the same store and broker (as a writer process would be)."""
    other = Database(db.storage.describe(), broker=db.broker.url)  # type: ignore[attr-defined]
    await other.connect()
    try:
        await define(other)
        yield other
    finally:
        await other.disconnect()


@asynccontextmanager
async def chat(broker: str) -> AsyncIterator[tuple[Database, WebSocketPlugin, Gate, Collector]]:
    db = Database(f"memory://order-{uuid.uuid4().hex[:12]}", broker=broker)
    await db.connect()
    try:
        await define(db)
        rooms = db.resources.rooms

        async def member_of_room(user: Any, filter: dict[str, Any] | None) -> bool:
            room = await rooms.get_or_none(str((filter or {}).get("roomId")))
            return room is not None and user.id in room["members"]

        plugin = WebSocketPlugin(
            port=0,
            heartbeat_interval=None,
            auth=JWT_AUTH,
            resources={
                "messages": {"guard": {"subscribe": member_of_room}},
                "rooms": True,
                "gate": True,
            },
        )
        await db.use_plugin(plugin)
        gate, seen = Gate(), Collector()
        await db.use_plugin(
            RecheckOnAccessChange(plugin, "rooms", ("members",), {"messages": "roomId"})
        )
        await db.use_plugin(gate)
        await db.use_plugin(seen)
        yield db, plugin, gate, seen
    finally:
        gate.release.set()
        await db.disconnect()


async def test_a_removed_member_never_receives_a_message_posted_after_the_removal(
    shared_broker_url,
):
    async with chat(shared_broker_url) as (db, plugin, gate, seen):
        messages, rooms = db.resources.messages, db.resources.rooms
        # The messages stream exists before the rooms stream (its reader learns of it first).
        await messages.insert({"roomId": "r1", "text": "before the room"})
        await rooms.insert({"id": "r1", "members": ["alice", "bob"]})
        await eventually(lambda: len(seen.changes) == 2, "the setup changes", TIMEOUT)

        async with (
            connect(plugin.url, token=make_token("alice")) as alice,
            connect(plugin.url, token=make_token("bob")) as bob,
        ):
            for client in (alice, bob):
                reply = await client.call("subscribe", resource="messages", filter={"roomId": "r1"})
                assert reply["type"] == "subscribed", reply
            assert (await alice.call("subscribe", resource="rooms"))["type"] == "subscribed"

            await db.resources.gate.insert({"n": 1})
            await asyncio.wait_for(gate.entered.wait(), TIMEOUT)
            # While the server is busy: bob is removed, then a message is posted.
            await rooms.update("r1", {"members": ["alice"]})
            await messages.insert({"roomId": "r1", "text": "after bob left"})
            gate.release.set()
            await eventually(lambda: len(seen.changes) == 5, "the three changes", TIMEOUT)

            # Bob's subscription is revoked, and the later message never reaches him.
            revoked = await bob.recv(TIMEOUT)
            assert revoked["type"] == "error" and revoked["code"] == "FORBIDDEN", revoked
            assert revoked["details"]["revoked"] is True
            assert [f for f in await bob.sync() if f["type"] == "event"] == []

            # Alice sees both, in commit order across the two resources.
            first, second = await alice.next_event(TIMEOUT), await alice.next_event(TIMEOUT)
            assert (first["resource"], first["event"]) == ("rooms", "update"), first
            assert (second["resource"], second["data"]["text"]) == ("messages", "after bob left")

        # Every hook of the process heard them in that order too.
        assert [(c.resource, c.event) for c in seen.changes[2:]] == [
            ("gate", "insert"), ("rooms", "update"), ("messages", "insert")
        ]  # fmt: skip


@pytest.mark.parametrize("batch", [1000, 4])
async def test_interleaved_writes_to_many_resources_arrive_in_commit_order(
    shared_broker_url, batch
):
    """Many changes of three resources, committed while the reader is busy, arrive in the order
    they were committed, across resources and publishers, at every listener; also when one read
    of the broker returns only part of what waits (``batch`` entries per stream, where the engine
    reads in batches)."""
    rounds = 40
    async with chat(shared_broker_url) as (db, _plugin, gate, seen), writer(db) as other:
        if hasattr(db.broker, "batch"):
            db.broker.batch = batch
        messages, rooms = other.resources.messages, db.resources.rooms
        await messages.insert({"roomId": "r0", "text": "m-1"})
        await eventually(lambda: len(seen.changes) == 1, "the setup change", TIMEOUT)
        await db.resources.gate.insert({"n": 0})
        await asyncio.wait_for(gate.entered.wait(), TIMEOUT)
        expected: list[tuple[str, str]] = []
        for n in range(rounds):  # a varying mix, so no resource's run is a whole batch
            if n == 0:  # the first change of a resource the reader has not seen yet
                await rooms.insert({"id": "r0", "members": ["u0"]})
                expected.append(("rooms", "u0"))
            elif n % 3 == 0:
                await rooms.update("r0", {"members": [f"u{n}"]})
                expected.append(("rooms", f"u{n}"))
            await messages.insert({"roomId": "r0", "text": f"m{n}"})
            expected.append(("messages", f"m{n}"))
            if n % 5 == 1:
                await db.resources.gate.insert({"n": n})
                expected.append(("gate", str(n)))
        gate.release.set()
        total = 2 + len(expected)
        await eventually(lambda: len(seen.changes) == total, "every change", TIMEOUT)

        def label(change: Change) -> tuple[str, str]:
            record = change.record
            if change.resource == "rooms":
                return "rooms", record["members"][0]
            if change.resource == "gate":
                return "gate", str(record["n"])
            return "messages", record["text"]

        assert [label(c) for c in seen.changes[2:]] == expected
