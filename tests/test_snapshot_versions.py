"""Listings carry each record's version beside the records (``Page.versions``), and the
WebSocket snapshot's dedup compares those versions: a snapshot taken while updates are still on
their way to the stream neither repeats nor loses a change, even when a record goes back to
content it had before (A, B, A again)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from ws_helpers import connect, notes_resource

from s3db_core import Change, Database
from s3db_ws_plugin import WebSocketPlugin


@pytest.mark.parametrize("cache", [None, True])
async def test_a_page_carries_each_records_version_and_the_records_are_unchanged(cache):
    db = Database(f"memory://pv-{uuid.uuid4().hex[:8]}", cache=cache)
    await db.connect()
    try:
        await notes_resource(db)
        notes = db.resources.notes
        ids = [(await notes.insert({"title": f"t{n}", "roomId": "r1"}))["id"] for n in range(5)]
        for n, id in enumerate(ids):
            for k in range(n):
                await notes.update(id, {"title": f"t{n}-{k}"})
        for _ in range(2):  # cold, then hot where the cache is on
            page = await notes.list(filter={"roomId": "r1"})
            assert [r["id"] for r in page.items] == ids
            assert all("version" not in r and set(r) == set(page.items[0]) for r in page.items)
            assert page.versions == {id: n + 1 for n, id in enumerate(ids)}
            for id in ids:
                assert page.versions[id] == (await notes.get_versioned(id)).version
        limited = await notes.list(limit=2)
        assert limited.versions == {id: n + 1 for n, id in enumerate(ids[:2])}
    finally:
        await db.disconnect()


async def test_a_snapshot_taken_while_updates_are_unpublished_repeats_and_loses_nothing():
    """Updates land in the store before their changes reach the stream (a slow publisher):
    the snapshot lists the newest state, then the stream brings the older ones. With content
    that goes A, B, A, comparing records would take the first A for the listed state and send
    B (older than what the snapshot showed) and A again; versions tell them apart."""
    db = Database(f"memory://sv-{uuid.uuid4().hex[:8]}")
    await db.connect()
    try:
        # No timestamps: a record that goes back to A is exactly the A it was.
        notes = await db.create_resource("cards", {"title": "string", "roomId": "string"})
        plugin = WebSocketPlugin(port=0, heartbeat_interval=None, resources={"cards": {}})
        await db.use_plugin(plugin)
        ids = [(await notes.insert({"title": "A", "roomId": "r1"}))["id"] for _ in range(20)]
        publish = db._publish
        held: list[Change] = []

        async def slow(change: Change) -> None:  # in the store already; the stream hears later
            held.append(change)

        async with connect(plugin.url) as client:
            db._publish = slow  # type: ignore[method-assign]
            for id in ids:
                await notes.update(id, {"title": "B"})
                await notes.update(id, {"title": "A"})
            reply = await client.call(
                "subscribe", resource="cards", filter={"roomId": "r1"}, snapshot=True, limit=100
            )
            assert reply["type"] == "subscribed"
            shown = {r["id"]: r["title"] for r in reply["data"]}
            assert shown == dict.fromkeys(ids, "A")
            db._publish = publish  # type: ignore[method-assign]
            for change in held:  # the late changes: all older than or equal to what was listed
                await publish(change)
            for id in ids:  # then one newer change per record: each must arrive, once
                await notes.update(id, {"title": "C"})
            events: list[dict[str, Any]] = []
            while len(events) < len(ids):
                events.append(await client.next_event(10.0))
            assert [(e["data"]["id"], e["data"]["title"], e["version"]) for e in events] == [
                (id, "C", 4) for id in ids
            ]
            await asyncio.sleep(0.2)
            assert await client.events() == []
    finally:
        await db.disconnect()
