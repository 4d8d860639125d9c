"""A plugin whose ``s3db_change`` raises: the write it announces still succeeds, the failure is
logged with an error id, and every other implementation (the WebSocket fan-out among them)
still runs, in order."""

from __future__ import annotations

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
