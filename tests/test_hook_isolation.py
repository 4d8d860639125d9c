"""A plugin whose ``s3db_change`` raises: the write it announces still succeeds, the failure is
logged with an error id, and every other implementation (the WebSocket fan-out among them)
still runs, in order."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from client_helpers import TIMEOUT
from structlog.testing import capture_logs

from s3db_core import Change, Database, hookimpl


class Broken:
    """Raises from ``s3db_change``, synchronously or from a coroutine."""

    def __init__(self, asynchronous: bool) -> None:
        self.asynchronous = asynchronous

    @hookimpl
    def s3db_change(self, change: Change):
        if self.asynchronous:

            async def fail() -> None:
                raise RuntimeError("async listener broke")

            return fail()
        raise RuntimeError("sync listener broke")


class Collect:
    def __init__(self) -> None:
        self.events: list[str] = []

    @hookimpl
    async def s3db_change(self, change: Change) -> None:
        self.events.append(change.event)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_a_raising_listener_neither_fails_the_write_nor_silences_the_others(asynchronous):
    db = Database("memory://")
    before, after = Collect(), Collect()
    await db.use_plugin(before)  # registered first: pluggy calls it last
    await db.use_plugin(Broken(asynchronous), name="broken")
    await db.use_plugin(after)  # registered last: pluggy calls it first
    await db.connect()
    items = await db.create_resource("items", {"n": "number"})
    with capture_logs() as logs:
        rec = await items.insert({"n": 1})
        await items.update(rec["id"], {"n": 2})
        await items.delete(rec["id"])
    assert await items.get_or_none(rec["id"]) is None  # every write went through
    assert before.events == after.events == ["insert", "update", "delete"]
    failures = [entry for entry in logs if entry["event"] == "s3db_change implementation failed"]
    assert len(failures) == 3
    assert all(f["plugin"] == "broken" and f["log_level"] == "error" for f in failures)
    assert len({f["error_id"] for f in failures}) == 3
    assert all(len(f["error_id"]) == 16 for f in failures)
    await db.disconnect()


async def test_subscribers_get_the_event_when_another_listener_raises(
    s3db_database, s3db_plugin_factory, s3db_client_factory
):
    """The user's view: a broken audit plugin stops neither the insert nor the live stream."""
    await s3db_database.create_resource("notes", {"title": "string"})
    plugin = await s3db_plugin_factory(s3db_database)
    # Registered after the WebSocket plugin, so pluggy calls it first.
    await s3db_database.use_plugin(Broken(asynchronous=False), name="audit")
    client = await s3db_client_factory(plugin)
    async with client.subscribe("notes") as sub:
        with capture_logs() as logs:
            note = await client.insert("notes", {"title": "hello"})
            event = await sub.next(timeout=TIMEOUT)
    assert (event.event, event.data) == ("insert", note)
    assert [e["plugin"] for e in logs if e["event"] == "s3db_change implementation failed"] == [
        "audit"
    ]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_a_raising_broker_listener_never_fails_the_write(broker_url, asynchronous):
    """A listener on the broker itself (below the hooks) that raises: on every engine, the
    local one included (where listeners run inside ``publish``, in the write's own task), the
    write returns, the listeners after it still hear the change, and the failure is logged
    with an error id."""
    db = Database(f"memory://isolation-{uuid.uuid4().hex[:12]}", broker=broker_url)
    heard: list[tuple[str, str]] = []
    got_all = asyncio.Event()

    def broken(change: Change):
        if asynchronous:

            async def fail() -> None:
                raise RuntimeError("async broker listener broke")

            return fail()
        raise RuntimeError("sync broker listener broke")

    def after(change: Change) -> None:
        heard.append((change.event, change.record["id"]))
        if len(heard) == 3:
            got_all.set()

    db.broker.subscribe(broken)
    db.broker.subscribe(after)
    await db.connect()
    try:
        items = await db.create_resource("items", {"n": "number"})
        with capture_logs() as logs:
            rec = await items.insert({"n": 1})
            await items.update(rec["id"], {"n": 2})
            await items.delete(rec["id"])
            await asyncio.wait_for(got_all.wait(), TIMEOUT)
        assert await items.get_or_none(rec["id"]) is None  # every write went through
        assert heard == [("insert", rec["id"]), ("update", rec["id"]), ("delete", rec["id"])]
        failures = [entry for entry in logs if entry["event"] == "listener_failed"]
        assert len(failures) == 3
        assert all(f["log_level"] == "error" and f["resource"] == "items" for f in failures)
        assert len({f["error_id"] for f in failures}) == 3
    finally:
        await db.disconnect()
