"""Database lifecycle, hooks (every hookspec is exercised) and plugin isolation."""

from __future__ import annotations

import subprocess
import sys

import pluggy
import pytest

from s3db_core import Change, Database, hookimpl, hookspecs


class Recorder:
    """Implements every hook, half sync and half async, and records the calls in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    @hookimpl
    def s3db_startup(self, db):
        self.calls.append(("startup", db))

    @hookimpl
    async def s3db_shutdown(self, db):
        self.calls.append(("shutdown", db))

    @hookimpl
    def s3db_resource_created(self, db, resource):
        self.calls.append(("resource_created", resource.name))

    @hookimpl
    async def s3db_before_insert(self, resource, data):
        data["note"] = "set by hook"
        self.calls.append(("before_insert", resource.name))

    @hookimpl
    def s3db_before_update(self, resource, id, data, current):
        self.calls.append(("before_update", id, dict(data), current["note"]))

    @hookimpl
    async def s3db_before_delete(self, resource, id, current):
        self.calls.append(("before_delete", id, current["title"]))

    @hookimpl
    async def s3db_change(self, change):
        self.calls.append(("change", change.event, change.record["id"]))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def test_every_hookspec_is_covered_by_the_recorder():
    specs = {n for n in dir(hookspecs) if n.startswith("s3db_")}
    implemented = {n for n in dir(Recorder) if n.startswith("s3db_")}
    assert specs == implemented


async def test_every_hook_fires_in_order_sync_and_async():
    db = Database("memory://")
    rec = Recorder()
    await db.use_plugin(rec)
    await db.connect()
    notes = await db.create_resource("notes", {"title": "string|required", "note": "string|optional"})
    item = await notes.insert({"title": "a"})
    assert item["note"] == "set by hook"
    await notes.update(item["id"], {"title": "b"})
    await notes.delete(item["id"])
    await db.disconnect()
    assert rec.names() == [
        "startup", "resource_created", "before_insert", "change",
        "before_update", "change", "before_delete", "change", "shutdown",
    ]
    assert ("before_update", item["id"], {"title": "b"}, "set by hook") in rec.calls
    assert ("before_delete", item["id"], "b") in rec.calls


async def test_use_plugin_on_a_connected_database_starts_only_that_plugin():
    db = Database("memory://")
    first, second = Recorder(), Recorder()
    await db.use_plugin(first)
    await db.connect()
    await db.use_plugin(second)
    assert first.names() == ["startup"]
    assert second.names() == ["startup"]
    await db.disconnect()


async def test_misspelled_hook_fails_at_registration():
    class Typo:
        @hookimpl
        def s3db_chnage(self, change):
            pass

    db = Database("memory://")
    with pytest.raises(pluggy.PluginValidationError):
        await db.use_plugin(Typo())
    assert not db.pm.get_plugins()


async def test_change_fires_only_after_the_write_is_durable():
    db = Database("memory://")
    seen = []

    class Checker:
        @hookimpl
        async def s3db_change(self, change: Change):
            stored = await db.resources["items"].get_or_none(change.record["id"])
            seen.append((change.event, stored))

    await db.use_plugin(Checker())
    await db.connect()
    items = await db.create_resource("items", {"n": "number"})
    rec = await items.insert({"n": 1})
    await items.update(rec["id"], {"n": 2})
    await items.delete(rec["id"])
    assert seen[0] == ("insert", {"id": rec["id"], "n": 1})
    assert seen[1] == ("update", {"id": rec["id"], "n": 2})
    assert seen[2] == ("delete", None)


async def test_change_carries_before_and_after():
    db = Database("memory://")
    changes: list[Change] = []

    class Collect:
        @hookimpl
        def s3db_change(self, change):
            changes.append(change)

    await db.use_plugin(Collect())
    await db.connect()
    items = await db.create_resource("items", {"n": "number"})
    rec = await items.insert({"n": 1})
    await items.update(rec["id"], {"n": 2})
    await items.delete(rec["id"])
    insert, update, delete = changes
    assert (insert.event, insert.record["n"], insert.previous) == ("insert", 1, None)
    assert (update.event, update.record["n"], update.previous["n"]) == ("update", 2, 1)
    assert (delete.event, delete.record["n"], delete.previous["n"]) == ("delete", 2, 2)
    assert all(c.resource == "items" and isinstance(c.timestamp, int) for c in changes)


async def test_two_databases_in_one_process_are_independent():
    a, b = Database("memory://"), Database("memory://")
    rec_a = Recorder()
    await a.use_plugin(rec_a)
    await a.connect()
    await b.connect()
    await b.create_resource("x", {"n": "number"})
    await b.resources.x.insert({"n": 1})
    assert rec_a.names() == ["startup"]
    assert "x" not in a.resources and "x" in b.resources
    await a.disconnect()
    await b.disconnect()


async def test_resources_by_attribute_and_key():
    db = Database("memory://")
    await db.connect()
    res = await db.create_resource("chat_messages", {"content": "string"})
    assert db.resources.chat_messages is res is db.resources["chat_messages"]
    assert list(db.resources) == ["chat_messages"]
    with pytest.raises(AttributeError):
        db.resources.nope  # noqa: B018
    with pytest.raises(ValueError):
        await db.create_resource("bad/name", {"a": "string"})


async def test_definitions_persist_in_s3db_json(tmp_path):
    url = f"file://{tmp_path}"
    db = Database(url)
    await db.connect()
    await db.create_resource("a", {"n": "number|required"}, timestamps=True)
    await db.disconnect()
    again = Database(url)
    await again.connect()
    assert again._saved_definitions["a"]["timestamps"] is True
    puts = again.storage.requests["PUT"]
    await again.create_resource("a", {"n": "number|required"}, timestamps=True)
    assert again.storage.requests["PUT"] == puts  # unchanged definition is not rewritten
    await again.disconnect()


def test_core_does_not_import_the_plugin_or_drivers():
    code = (
        "import sys, s3db_core, s3db_core.storage.memory, s3db_core.storage.file, s3db_core.storage.s3;"
        "bad=[m for m in sys.modules if m.startswith(('s3db_ws_plugin','s3db_auth_drivers'))];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_quickstart_demo_runs():
    out = subprocess.run(
        [sys.executable, "-m", "examples.quickstart"], capture_output=True, text=True, check=True
    ).stdout
    assert "lobby has 2 messages" in out
    assert "change: update chat_messages" in out


async def test_a_store_that_is_down_fails_fast_without_leaking_credentials():
    import socket
    import time

    from s3db_core import StorageError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = Database(f"http://AKIAEXAMPLE:topsecret@127.0.0.1:{port}/bucket/prefix")
    started = time.monotonic()
    with pytest.raises(StorageError) as err:
        await db.connect()
    assert time.monotonic() - started < 10
    assert "topsecret" not in str(err.value) and "AKIAEXAMPLE" not in str(err.value)
    assert f"127.0.0.1:{port}" in str(err.value)
