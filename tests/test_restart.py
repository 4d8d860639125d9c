"""A database restarted in the same process (``disconnect()`` then ``connect()``) serves and
streams again: every plugin's startup runs again, and every subscriber receives what follows,
whether it subscribed fresh after the restart or resumed from its saved position.

A real server (the WebSocket plugin) and the product's Python client, on memory:// and file://
stores, with the local, Redis and NATS brokers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from client_helpers import TIMEOUT

from s3db_core import Database, hookimpl
from s3db_ws_plugin import WebSocketPlugin
from s3db_ws_plugin.client import Backoff, Client

FAST = Backoff(initial=0.02, maximum=0.1, jitter=0.0)


@pytest.fixture(params=["memory", "file"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "memory":
        return f"memory://restart-{uuid.uuid4().hex[:12]}"
    return f"file://{tmp_path / 'store'}"


async def _eventually(check, what: str, deadline: float = 15.0) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Lifecycle:
    """A plugin that counts its startups and shutdowns."""

    def __init__(self) -> None:
        self.started = 0
        self.stopped = 0

    @hookimpl
    async def s3db_startup(self, db: Database) -> None:
        self.started += 1

    @hookimpl
    def s3db_shutdown(self, db: Database) -> None:
        self.stopped += 1


async def test_a_restarted_database_streams_to_fresh_and_resumed_subscribers(
    store_url: str, broker_url: str
):
    db = Database(store_url, broker=broker_url)
    await db.connect()
    lifecycle = Lifecycle()
    await db.use_plugin(lifecycle)
    plugin = WebSocketPlugin(port=0, heartbeat_interval=None, resources={"notes": True})
    await db.use_plugin(plugin)
    clients: list[Client] = []
    try:
        notes = await db.create_resource("notes", {"text": "string|required"})
        before = await notes.insert({"text": "before"})
        # A subscriber that stays (its client reconnects and resumes from its position).
        resumer = await Client(plugin.url, backoff=FAST, heartbeat=None).connect()
        clients.append(resumer)
        resumed = await resumer.subscribe("notes")
        await notes.update(before["id"], {"text": "seen live"})
        assert (await resumed.next(timeout=TIMEOUT)).data["text"] == "seen live"
        assert lifecycle.started == 1

        await db.disconnect()
        assert lifecycle.stopped == 1
        await db.connect()
        assert lifecycle.started == 2, "every plugin's startup runs again on connect"
        await _eventually(lambda: resumer.reconnects >= 1 and resumer.connected, "the reconnect")
        await resumer.ping()

        fresh_client = await Client(plugin.url, backoff=FAST, heartbeat=None).connect()
        clients.append(fresh_client)
        fresh = await fresh_client.subscribe("notes")

        after = await db.resources.notes.insert({"text": "after the restart"})
        for name, sub in (("fresh", fresh), ("resumed", resumed)):
            event = await sub.next(timeout=TIMEOUT)
            while event.is_reload:  # a broker whose history did not survive says so
                event = await sub.next(timeout=TIMEOUT)
            assert (event.event, event.data["id"]) == ("insert", after["id"]), name
            assert event.data["text"] == "after the restart", name
        # A write through the socket after the restart streams too.
        written = await fresh_client.insert("notes", {"text": "from a client"})
        for sub in (fresh, resumed):
            event = await sub.next(timeout=TIMEOUT)
            assert event.data["id"] == written["id"]
    finally:
        for client in clients:
            await client.close()
        await db.disconnect()


async def test_a_second_restart_streams_too(broker_url: str):
    """Two restarts in a row: nothing accumulates or goes missing (one listener, one server)."""
    db = Database(f"memory://restart-{uuid.uuid4().hex[:12]}", broker=broker_url)
    plugin = WebSocketPlugin(port=0, heartbeat_interval=None, resources={"notes": True})
    await db.use_plugin(plugin)
    seen: list[Any] = []

    class Counter:
        @hookimpl
        def s3db_change(self, change: Any) -> None:
            seen.append(change)

    await db.use_plugin(Counter())
    for n in range(3):
        await db.connect()
        try:
            notes = await db.create_resource("notes", {"text": "string"})
            async with Client(plugin.url, heartbeat=None) as client:
                sub = await client.subscribe("notes")
                record = await notes.insert({"text": f"round {n}"})
                event = await sub.next(timeout=TIMEOUT)
                assert event.data["id"] == record["id"]
                await _eventually(lambda n=n: len(seen) == n + 1, "the change hook")
        finally:
            await db.disconnect()
    assert len(seen) == 3, "each change reached the hook exactly once"
