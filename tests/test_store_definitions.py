"""What a store records about itself (``s3db.json``), as several processes and other programs
see it: saved definitions are loaded on connect, fields this version does not know survive every
write, a store written by s3db.js is refused at connect and never rewritten, and repair never
touches keys it did not create. On memory://, file:// and the real S3 server (SeaweedFS)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from client_helpers import TIMEOUT
from test_docs import blocks_of

from s3db_core import Database, UnsupportedStoreError
from s3db_core.storage import open_storage
from s3db_ws_plugin import WebSocketPlugin
from s3db_ws_plugin.client import Client

ROOT = Path(__file__).resolve().parent.parent
S3DB = str(Path(sys.executable).parent / "s3db")
TASKS = {"title": "string|required", "status": "string|default:open"}
BY_STATUS = {"byStatus": {"fields": {"status": "string"}}}


async def _objects(url: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Every object of the store: key -> (body, metadata)."""
    storage = open_storage(url)
    await storage.connect()
    try:
        found: dict[str, tuple[bytes, dict[str, str]]] = {}
        after = None
        while True:
            page = await storage.list("", start_after=after, max_keys=1000)
            for key in page.keys:
                obj = await storage.get(key)
                found[key] = (obj.body, obj.metadata)
            if page.next_start_after is None:
                return found
            after = page.next_start_after
    finally:
        await storage.close()


async def _put(url: str, objects: dict[str, tuple[bytes, dict[str, str]]]) -> None:
    storage = open_storage(url)
    await storage.connect()
    try:
        for key, (body, metadata) in objects.items():
            await storage.put(key, body, metadata)
    finally:
        await storage.close()


async def _metadata(url: str) -> dict[str, Any]:
    return orjson.loads((await _objects(url))["s3db.json"][0])


# -- saved definitions are loaded on connect ---------------------------------------------------
async def test_a_second_database_sees_the_saved_definitions(storage_url: str):
    first = Database(storage_url)
    await first.connect()
    tasks = await first.create_resource("tasks", TASKS, timestamps=True, partitions=BY_STATUS)
    task = await tasks.insert({"title": "write the docs"})
    await first.disconnect()

    second = Database(storage_url)
    await second.connect()
    try:
        loaded = second.resources.tasks  # no create_resource in this process
        assert loaded is second.resources["tasks"] and "tasks" in second.resources
        assert loaded.definition() == tasks.definition()
        assert await loaded.get(task["id"]) == task
        done = await loaded.insert({"title": "review", "status": "done"})
        assert "createdAt" in done  # timestamps came from the saved definition
        assert [r["id"] for r in await loaded.query({"status": "done"})] == [done["id"]]
        # create_resource still defines and redefines.
        again = await second.create_resource(
            "tasks", {**TASKS, "owner": "string"}, timestamps=True, partitions=BY_STATUS
        )
        assert second.resources.tasks is again
        assert (await again.update(task["id"], {"owner": "ann"}))["owner"] == "ann"
    finally:
        await second.disconnect()
    third = Database(storage_url)
    await third.connect()
    try:
        assert "owner" in third.resources.tasks.definition()["attributes"]
    finally:
        await third.disconnect()


async def test_a_missing_resource_says_how_to_define_it(db):
    with pytest.raises(AttributeError, match="create_resource"):
        db.resources.nope  # noqa: B018


async def test_an_unreadable_saved_definition_is_skipped_not_fatal(storage_url: str):
    document = {
        "version": 1,
        "resources": {
            "good": {"attributes": {"n": "number"}, "timestamps": False, "partitions": {},
                     "behavior": "body-overflow"},
            "odd": {"attributes": {"n": "no-such-type"}},
            "../escape": {"attributes": {"n": "number"}},
            "flat": "not an object",
        },
    }  # fmt: skip
    await _put(storage_url, {"s3db.json": (orjson.dumps(document), {})})
    db = Database(storage_url)
    await db.connect()
    try:
        assert list(db.resources) == ["good"]
        await db.resources.good.insert({"n": 1})
        # Defining another resource keeps the entries it could not read, as they were.
        await db.create_resource("more", {"n": "number"})
    finally:
        await db.disconnect()
    saved = (await _metadata(storage_url))["resources"]
    for name in ("odd", "../escape", "flat"):
        assert saved[name] == document["resources"][name]
    assert set(saved) == {"good", "odd", "../escape", "flat", "more"}


async def test_two_processes_defining_resources_keep_each_others_definitions(storage_url: str):
    """Both read s3db.json at connect; each then defines its own resource. Neither write may
    drop the other's definition (a stale copy written back would)."""
    one, two = Database(storage_url), Database(storage_url)
    await one.connect()
    await two.connect()
    try:
        await one.create_resource("alpha", {"n": "number"})
        await two.create_resource("beta", {"n": "number"})
        await asyncio.gather(
            one.create_resource("gamma", {"n": "number"}),
            two.create_resource("delta", {"n": "number"}),
        )
        assert "alpha" in two.resources  # learned when it wrote s3db.json
    finally:
        await one.disconnect()
        await two.disconnect()
    assert set((await _metadata(storage_url))["resources"]) == {"alpha", "beta", "gamma", "delta"}


# -- fields this version does not know survive every write ---------------------------------------
async def test_unknown_fields_of_s3db_json_survive_every_write(storage_url: str):
    notes = {"attributes": {"text": "string"}, "timestamps": False, "partitions": {},
             "behavior": "body-overflow", "x-ui": {"color": "red"}}  # fmt: skip
    document = {
        "version": 1,
        "x-owner": "billing-team",
        "futureField": [1, {"nested": True}],
        "resources": {"notes": notes},
    }
    await _put(storage_url, {"s3db.json": (orjson.dumps(document), {})})
    db = Database(storage_url)
    await db.connect()
    try:
        await db.create_resource("notes", {"text": "string"})  # unchanged: not rewritten
        assert await _metadata(storage_url) == document
        await db.create_resource("tags", {"name": "string"})  # a new resource
        await db.create_resource("notes", {"text": "string", "pinned": "boolean"}, migrate=True)
    finally:
        await db.disconnect()
    saved = await _metadata(storage_url)
    assert saved["x-owner"] == "billing-team"
    assert saved["futureField"] == [1, {"nested": True}]
    assert saved["resources"]["notes"]["x-ui"] == {"color": "red"}
    assert saved["resources"]["notes"]["attributes"] == {"text": "string", "pinned": "boolean"}
    assert saved["resources"]["tags"]["attributes"] == {"name": "string"}


# -- a store written by s3db.js -----------------------------------------------------------------
def s3db_js_metadata(**drop: bool) -> dict[str, Any]:
    """``s3db.json`` as s3db.js 21.x writes it (two resources, one redefined once)."""
    users_v0 = {
        "hash": "sha256:9f1c5a0e4b7d2c8a6f3e1d0b9a8c7e6f5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a",
        "attributes": {"name": "string|required", "email": "email|required", "region": "string"},
        "behavior": "user-managed",
        "timestamps": True,
        "partitions": {"byRegion": {"fields": {"region": "string"}}},
        "paranoid": True,
        "allNestedObjectsOptional": True,
        "autoDecrypt": True,
        "cache": False,
        "asyncEvents": True,
        "hooks": {},
        "idSize": 22,
        "createdAt": "2025-03-02T10:11:12.000Z",
    }
    users_v1 = {**users_v0, "hash": "sha256:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
                "attributes": {**users_v0["attributes"], "plan": "string|optional"},
                "createdAt": "2025-04-07T08:09:10.000Z"}  # fmt: skip
    document: dict[str, Any] = {
        "version": "1",
        "s3dbVersion": "21.4.2",
        "lastUpdated": "2025-04-07T08:09:10.123Z",
        "resources": {
            "users": {
                "currentVersion": "v1",
                "partitions": {"byRegion": {"fields": {"region": "string"}}},
                "createdBy": "user",
                "versions": {"v0": users_v0, "v1": users_v1},
            },
            "orders": {
                "currentVersion": "v0",
                "partitions": {},
                "versions": {"v0": {**users_v0, "attributes": {"total": "number"},
                                    "partitions": {}}},
            },  # fmt: skip
        },
        "schemaRegistry": {
            "users": {"nextIndex": 5, "mapping": {"name": "0", "email": "1", "region": "2",
                                                  "plan": "3"}, "burned": []},
        },  # fmt: skip
        "pluginRegistry": {"audit": {"registered": "2025-03-02T10:11:12.000Z"}},
    }
    if drop.get("s3dbVersion"):
        del document["s3dbVersion"]
    if drop.get("schemaRegistry"):
        del document["schemaRegistry"]
    if drop.get("versions"):
        for entry in document["resources"].values():
            del entry["versions"], entry["currentVersion"]
    return document


# What s3db.js keeps beside its records, besides s3db.json.
S3DB_JS_OBJECTS = {
    "resource=users/data/id=u1": (b"", {"0": "Ann", "1": "ann@example.com", "2": "EU", "_v": "v1"}),
    "resource=users/partition=byRegion/region=EU/id=u1": (b"", {"_v": "v1"}),
    "resource=users/historical/id=u1": (b'{"name":"Ann"}', {"_v": "v0"}),
    "resource=users/sequence=id": (b"", {"value": "42"}),
    "resource=orders/data/id=o1": (b"", {"0": "42", "_v": "v0"}),
    "plugin=audit/resource=users/data/id=a1": (b'{"op":"insert"}', {}),
    "plugin=cache/config": (b'{"ttl":60}', {}),
}


@pytest.mark.parametrize(
    "drop",
    [{}, {"s3dbVersion": True, "schemaRegistry": True}, {"s3dbVersion": True, "versions": True}],
    ids=["as-written", "versions-only", "schema-registry-only"],
)
async def test_an_s3db_js_store_is_refused_at_connect_and_never_rewritten(
    storage_url: str, drop: dict[str, bool]
):
    await _put(storage_url, {
        "s3db.json": (orjson.dumps(s3db_js_metadata(**drop), option=orjson.OPT_INDENT_2), {}),
        **S3DB_JS_OBJECTS,
    })  # fmt: skip
    before = await _objects(storage_url)
    db = Database(storage_url)
    with pytest.raises(UnsupportedStoreError) as refused:
        await db.connect()
    message = str(refused.value)
    assert "\n" not in message and len(message) < 400
    assert "s3db.js" in message and "not supported yet" in message
    assert "another bucket or prefix" in message
    assert "testsecret" not in message  # the S3 URL's credentials never show
    assert refused.value.code == "UNSUPPORTED_STORE"
    assert not db.connected
    with pytest.raises(AttributeError):
        db.resources.users  # noqa: B018
    assert await _objects(storage_url) == before  # not one byte changed


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_and_repair_refuse_an_s3db_js_store_with_one_line(tmp_path: Path):
    url = f"file://{tmp_path / 'store'}"
    asyncio.run(_put(url, {"s3db.json": (orjson.dumps(s3db_js_metadata()), {}), **S3DB_JS_OBJECTS}))
    before = asyncio.run(_objects(url))
    served = _run(S3DB, "serve", "tests.startup_app:make_db", env={"S3DB_APP_STORE": url})
    assert served.returncode == 1
    lines = served.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in served.stderr, served.stderr
    record = json.loads(lines[0])
    assert record["level"] == "error" and record["hint"]
    assert "s3db.js" in record["error"] and "not supported yet" in record["error"]
    assert "another bucket or prefix" in record["error"]
    repaired = _run(S3DB, "repair", url, env={})
    assert repaired.returncode == 1 and repaired.stdout == ""
    assert len(repaired.stderr.splitlines()) == 1 and "s3db.js" in repaired.stderr
    assert asyncio.run(_objects(url)) == before


# -- repair never touches keys it did not create ----------------------------------------------
async def test_repair_never_touches_keys_it_did_not_create(storage_url: str):
    db = Database(storage_url)
    await db.connect()
    try:
        people = await db.create_resource(
            "people", {"name": "string", "room": "string"},
            partitions={"byRoom": {"fields": {"room": "string"}}},
        )  # fmt: skip
        ann = await people.insert({"name": "ann", "room": "r1"})
        stale = people._partition_keys({**ann, "room": "r9"})["byRoom"]
        await db.storage.put(stale, b"", {})  # one reference of ours, stale: repair removes it
        foreign = {
            "plugin=audit/resource=people/data/id=a1": (b'{"op":"insert"}', {}),
            "resource=people/historical/id=h1": (b'{"name":"old"}', {"_v": "v0"}),
            "resource=people/sequence=id": (b"", {"value": "7"}),
            "resource=people/partition=byRegion/region=EU/id=x1": (b"", {"_v": "v0"}),
            "resource=people/partition=byRoom/room=r1/id=js1": (b"", {"_v": "v0"}),
            "resource=people/partition=byRoom/wing=w/room=r1/id=x2": (b"", {}),
            "resource=people/partition=byRoom/room=r1": (b"", {}),
            "resource=people/data/readme": (b"not a record", {}),
            "resource=people/data/id=x3/extra": (b"", {}),
        }
        await _put(storage_url, foreign)
        report = await db.repair(grace=0)
        found = report.resources["people"]
        assert found.references_removed == [stale]
        assert found.records == 1 and found.damaged == []
        after = await _objects(storage_url)
        for key, (body, metadata) in foreign.items():
            assert after[key] == (body, metadata), key
        assert stale not in after
    finally:
        await db.disconnect()


def test_repair_leaves_files_that_only_look_like_temp_files(tmp_path: Path):
    async def go() -> None:
        db = Database(f"file://{tmp_path}")
        await db.connect()
        try:
            await db.create_resource("people", {"name": "string"})
            await db.resources.people.insert({"name": "ann"})
            mine = tmp_path / "notes%t"  # a file of the user's that happens to end in %t
            mine.write_bytes(b"keep me")
            os.utime(mine, (1, 1))
            assert (await db.repair(grace=0)).temp_files_removed == 0
            assert mine.read_bytes() == b"keep me"
        finally:
            await db.disconnect()

    asyncio.run(go())


# -- the stand-alone writer of docs/brokers.md, as a script in its own process ------------------
def _writer_example() -> str:
    found = [
        b.code
        for b in blocks_of(ROOT / "docs" / "brokers.md")
        if "db.resources.orders.insert" in b.code and "asyncio.run(" in b.code
    ]
    assert len(found) == 1, "docs/brokers.md shows one stand-alone writer script"
    return found[0]


@pytest.fixture(params=["file", "s3"])
def shared_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store several processes can open (memory:// is one process's own)."""
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    return request.getfixturevalue("s3_server").url(f"writer-{uuid.uuid4().hex[:12]}")


async def test_the_docs_writer_script_writes_to_a_store_another_process_defined(
    shared_store_url: str, shared_broker_url: str, tmp_path: Path
):
    script = tmp_path / "import_orders.py"
    script.write_text(_writer_example())
    db = Database(shared_store_url, broker=shared_broker_url)
    await db.connect()
    try:
        await db.create_resource("orders", {"total": "number|required"})
        plugin = WebSocketPlugin(port=0, heartbeat_interval=None, resources={"orders": True})
        await db.use_plugin(plugin)
        async with Client(plugin.url, heartbeat=None) as client:
            orders = await client.subscribe("orders")
            writer = await asyncio.create_subprocess_exec(
                sys.executable, str(script),
                cwd=tmp_path,
                env={**os.environ, "PYTHONPATH": str(ROOT), "STORE_URL": shared_store_url,
                     "BROKER_URL": shared_broker_url},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(writer.communicate(), 120)
            assert writer.returncode == 0, err.decode()
            assert err == b""
            event = await orders.next(timeout=TIMEOUT * 4)
            assert (event.event, event.data["total"]) == ("insert", 42)
            assert await db.resources.orders.get(event.data["id"]) == event.data
    finally:
        await db.disconnect()
