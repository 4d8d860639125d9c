"""The record cache: hot reads cost no store request, and every process's cache stays exact
through the change stream (records, tombstones, the fill race, continuity, the sweep)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from broker_helpers import eventually
from services import start_redis

from s3db_core import Change, Database

ITEM = {"n": "number", "room": "string|optional", "tags": "json|optional"}


def counts(db: Database) -> dict[str, int]:
    return db.storage.requests.snapshot()


async def open_cached(store: str, broker: str = "local", **cache) -> Database:
    db = Database(store, broker=broker, cache=cache or True)
    await db.connect()
    await db.create_resource("things", ITEM, partitions={"byRoom": {"fields": {"room": "string"}}})
    return db


def memory_url() -> str:
    return f"memory://cache-{uuid.uuid4().hex[:12]}"


# -- options --------------------------------------------------------------------------------------
def test_off_by_default_and_options_are_checked_at_construction(tmp_path):
    assert Database("memory://x").cache is None
    assert Database("memory://x", cache={}).cache is not None
    for bad in ({"max_bytes": 10}, {"max_bytes": "1"}, {"lists": "yes"}, {"max_stale": 0},
                {"max_stale": True}, {"ttl": 5}, "on"):  # fmt: skip
        with pytest.raises(ValueError):
            Database("memory://x", cache=bad)  # type: ignore[arg-type]
    # The local broker on a store other processes may write: refused without a sweep or a
    # promise that this process is the only writer.
    with pytest.raises(ValueError, match="max_stale"):
        Database(f"file://{tmp_path}", cache={})
    assert Database(f"file://{tmp_path}", cache={"max_stale": 5}).cache is not None
    assert Database(f"file://{tmp_path}", cache={"single_writer": True}).cache is not None
    assert Database(f"file://{tmp_path}", broker="redis://127.0.0.1:1", cache={}).cache


# -- records ----------------------------------------------------------------------------------------
async def test_hot_get_costs_nothing_and_callers_never_share_the_cached_object():
    db = await open_cached(memory_url())
    items = db.resources.things
    rec = await items.insert({"n": 1, "tags": {"a": [1, 2]}})
    db.storage.requests.reset()
    got = await items.get(rec["id"])
    assert got == rec and counts(db) == {}
    got["tags"]["a"].append(3)  # mutating what a read returned...
    rec["n"] = 99  # ...or what the write returned...
    assert await items.get(rec["id"]) == {"id": rec["id"], "n": 1, "tags": {"a": [1, 2]}}
    assert await items.exists(rec["id"]) and counts(db) == {}  # ...never changes the cache
    await items.get(rec["id"], consistency="store")  # bypass: the store answers
    assert counts(db) == {"GET": 1}
    assert db.stats.cache_hits >= 3 and db.stats.cache_bytes > 0
    await db.disconnect()


async def test_a_delete_leaves_a_tombstone_and_a_miss_fills_then_hits():
    store = memory_url()
    db = await open_cached(store)
    other = Database(store)  # writes the same store without this cache's broker
    await other.connect()
    outside = await other.create_resource("things", ITEM)
    rec = await db.resources.things.insert({"n": 1})
    await db.resources.things.delete(rec["id"])
    db.storage.requests.reset()
    assert await db.resources.things.get_or_none(rec["id"]) is None and counts(db) == {}
    made = await outside.insert({"n": 2})  # not on this cache's stream
    assert await db.resources.things.get(made["id"]) == made and counts(db) == {"GET": 1}
    assert await db.resources.things.get(made["id"]) == made and counts(db) == {"GET": 1}
    assert db.stats.cache_misses == 1
    await other.disconnect()
    await db.disconnect()


async def test_a_fill_that_raced_a_change_of_the_record_is_not_kept():
    db = await open_cached(memory_url())
    items, cache = db.resources.things, db.cache
    assert cache is not None
    rec = await items.insert({"n": 1})
    cache.flush()
    begun = cache.begin()  # a read starts...
    stored = await items.get(rec["id"], consistency="store")  # ...and gets n=1
    updated = await items.update(rec["id"], {"n": 2})  # a change arrives meanwhile
    cache.fill("things", rec["id"], stored, None, 1, begun)  # the read ends: dropped
    assert db.stats.cache_fills_dropped == 1
    db.storage.requests.reset()
    # Which of the two is newer cannot be told here (a writer may publish late): the next read
    # asks the store, and what it reads is kept.
    assert await items.get(rec["id"]) == updated and counts(db) == {"GET": 1}
    assert await items.get(rec["id"]) == updated and counts(db) == {"GET": 1}
    await db.disconnect()


async def test_memory_is_bounded_by_bytes_least_recently_used_out_first():
    db = await open_cached(memory_url(), max_bytes=8192, lists=False)
    items = db.resources.things
    made = [await items.insert({"n": i, "tags": "x" * 200}) for i in range(100)]
    assert db.stats.cache_bytes <= 8192
    db.storage.requests.reset()
    await items.get(made[-1]["id"])
    assert counts(db) == {}  # the newest is still there
    await items.get(made[0]["id"])
    assert counts(db) == {"GET": 1}  # the oldest was evicted
    await db.disconnect()


# -- lists --------------------------------------------------------------------------------------------
async def test_hot_list_query_count_cost_nothing_and_follow_every_change():
    db = await open_cached(memory_url())
    items = db.resources.things
    made = [await items.insert({"n": i, "room": "a" if i % 2 else "b"}) for i in range(30)]
    await items.list(limit=10)
    await items.list(filter={"room": "a"})
    db.storage.requests.reset()
    assert [r["id"] for r in (await items.list(limit=10)).items] == [r["id"] for r in made[:10]]
    assert await items.count() == 30 and len(await items.query({"room": "a"})) == 15
    await items.delete(made[1]["id"])
    await items.update(made[2]["id"], {"room": "a"})  # moves partition
    late = await items.insert({"n": 99, "room": "a"})
    db.storage.requests.reset()
    in_a = [r["id"] for r in (await items.list(filter={"room": "a"}, limit=100)).items]
    assert made[1]["id"] not in in_a and made[2]["id"] in in_a and in_a[-1] == late["id"]
    assert len(in_a) == 16 and await items.count() == 30
    desc = await items.list(limit=3, order="desc")
    assert [r["id"] for r in desc.items] == [late["id"], made[29]["id"], made[28]["id"]]
    assert counts(db) == {}
    await db.disconnect()


# -- across processes: a shared broker ----------------------------------------------------------------
async def test_every_process_cache_follows_the_stream(s3_server, shared_broker_url):
    store = s3_server.url(f"cache-{uuid.uuid4().hex[:12]}")
    a = await open_cached(store, shared_broker_url)
    b = await open_cached(store, shared_broker_url)
    rec = await a.resources.things.insert({"n": 1, "room": "r"})
    assert await b.resources.things.get(rec["id"]) == rec  # b fills from the store
    await b.resources.things.list(filter={"room": "r"})
    await a.resources.things.update(rec["id"], {"n": 2})
    b.storage.requests.reset()

    async def b_sees(n):
        end = time.monotonic() + 10
        while time.monotonic() < end:
            got = await b.resources.things.get_or_none(rec["id"])
            if (got or {}).get("n") == n or (n is None and got is None):
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"b never saw n={n}")

    await b_sees(2)
    await a.resources.things.delete(rec["id"])
    await b_sees(None)
    assert (await b.resources.things.list(filter={"room": "r"})).items == []
    assert counts(b) == {}  # every read answered by b's cache, kept by the stream
    await a.disconnect()
    await b.disconnect()


async def test_an_update_published_after_the_delete_does_not_bring_the_record_back(
    s3_server, redis_url
):
    """A writer that held a change through a broker outage publishes it late, after its later
    writes: an update can reach the stream after the record's delete. The delete of version v
    comes after every update up to v, so the late update is older than the tombstone."""
    store = s3_server.url(f"cache-{uuid.uuid4().hex[:12]}")
    broker = f"{redis_url}?prefix=late{uuid.uuid4().hex[:8]}"
    a = await open_cached(store, broker)
    b = await open_cached(store, broker)
    try:
        things = a.resources.things
        rec = await things.insert({"n": 1, "room": "r"})
        publish = a._publish
        held: list[Change] = []

        async def hold(change: Change) -> None:
            held.append(change)

        a._publish = hold  # type: ignore[method-assign]
        await things.update(rec["id"], {"n": 2})  # in the store; its change waits
        a._publish = publish  # type: ignore[method-assign]
        await things.delete(rec["id"])
        await eventually(lambda: b.cache.lookup("things", rec["id"]) == (True, None), "tombstone")
        await publish(held[0])  # the update, late
        marker = await things.insert({"n": 9, "room": "m"})  # after it on the stream
        await eventually(lambda: b.cache.lookup("things", marker["id"])[0], "the marker")
        assert b.cache.lookup("things", rec["id"]) == (True, None)
        assert await b.resources.things.get_or_none(rec["id"]) is None
    finally:
        await a.disconnect()
        await b.disconnect()


async def test_the_cache_stops_serving_while_the_reader_is_down_and_flushes_on_lost_history():
    redis = start_redis(persistent=False)
    try:
        store = memory_url()
        broker = f"{redis.url}?prefix=c{uuid.uuid4().hex[:8]}"
        a = await open_cached(store, broker)
        b = await open_cached(store, broker)
        items = b.resources.things
        rec = await a.resources.things.insert({"n": 1})
        await eventually(lambda: b.cache._streams.get("things") is not None, "b hears a")
        await items.get(rec["id"])
        b.storage.requests.reset()
        await items.get(rec["id"])
        assert counts(b) == {}
        redis.kill()
        await eventually(lambda: not b.cache.serving, "b stops serving")
        await items.get(rec["id"])
        assert counts(b) == {"GET": 1}  # not served while changes may be missed
        redis.start()  # back empty: b's history no longer reaches back
        await eventually(lambda: b.cache.serving, "b serves again", deadline=20)
        assert b.stats.cache_flushes >= 1
        await a.resources.things.update(rec["id"], {"n": 5})
        end = time.monotonic() + 10  # recovering: read from the store, then kept once settled
        while True:
            b.storage.requests.reset()
            assert (await items.get(rec["id"]))["n"] == 5
            if counts(b) == {}:
                break
            assert time.monotonic() < end, "b never kept the record again"
            await asyncio.sleep(0.01)
        await a.disconnect()
        await b.disconnect()
    finally:
        redis.stop()


async def test_a_reconnect_pauses_and_refills_from_the_store(redis_url):
    store = memory_url()
    broker = f"{redis_url}?prefix=c{uuid.uuid4().hex[:8]}"
    a = await open_cached(store, broker)
    b = await open_cached(store, broker)
    rec = await a.resources.things.insert({"n": 1})
    await eventually(lambda: b.cache._streams.get("things") is not None, "b hears a")
    await b.resources.things.get(rec["id"])
    b.broker._continuity_event("down")  # what the reader says on a connection error
    await a.resources.things.update(rec["id"], {"n": 2})
    assert b.stats.cache_flushes == 1  # paused: records held may be older than the store
    b.broker._continuity_event("up")
    await eventually(lambda: b.cache.serving, "b serves again")
    assert b.stats.cache_flushes == 1  # history reached back: positions kept, no second flush
    assert b.cache._streams["things"].epoch is not None
    b.storage.requests.reset()
    assert (await b.resources.things.get(rec["id"]))["n"] == 2 and counts(b) == {"GET": 1}
    assert (await b.resources.things.get(rec["id"]))["n"] == 2 and counts(b) == {"GET": 1}
    await a.disconnect()
    await b.disconnect()


# -- writes outside the stream: the sweep -------------------------------------------------------------
async def test_max_stale_sweep_catches_writes_that_bypass_the_stream(s3_server):
    store = s3_server.url(f"cache-{uuid.uuid4().hex[:12]}")
    db = await open_cached(store, max_stale=0.2)
    raw = Database(store)  # another program: same store, no shared broker
    await raw.connect()
    outside = await raw.create_resource("things", ITEM, partitions={"byRoom": {"fields": {"room": "string"}}})
    items = db.resources.things
    rec = await items.insert({"n": 1, "room": "r"})
    gone = await items.insert({"n": 2, "room": "r"})
    assert len((await items.list(filter={"room": "r"})).items) == 2
    await outside.update(rec["id"], {"n": 10})
    await outside.delete(gone["id"])
    added = await outside.insert({"n": 3, "room": "r"})
    start = time.monotonic()
    await eventually(lambda: (db.cache.lookup("things", rec["id"])[1] or {}).get("n") == 10,
                     "the sweep re-reads the changed record")  # fmt: skip
    await eventually(lambda: db.cache.lookup("things", gone["id"]) == (True, None), "tombstone")
    assert time.monotonic() - start < 5
    room = [r["id"] for r in (await items.list(filter={"room": "r"})).items]
    assert room == [rec["id"], added["id"]]
    db.storage.requests.reset()
    await asyncio.sleep(0.5)  # quiet sweeps: LISTs only, no GET of unchanged records
    assert set(counts(db)) == {"LIST"}
    await raw.disconnect()
    await db.disconnect()


async def test_stats_count_hits_misses_flushes():
    db = await open_cached(memory_url())
    rec = await db.resources.things.insert({"n": 1})
    await db.resources.things.get(rec["id"])
    db.cache.on_change(Change("things", "update", {**rec, "n": 2}, rec, 0, 2, 1, "other-epoch"))
    snap = db.stats.snapshot()
    assert snap["cache_hits"] == 1 and snap["cache_flushes"] == 1 and "cache_bytes" in snap
    await db.disconnect()


# -- the WebSocket plugin reads through the cache ------------------------------------------------------
async def test_websocket_list_and_snapshot_use_the_cache_and_metrics_export_it():
    import aiohttp
    from ws_helpers import connect, notes_resource

    from s3db_ws_plugin import WebSocketPlugin

    db = Database(memory_url(), cache={})
    await db.connect()
    try:
        await notes_resource(db)
        notes = db.resources.notes
        made = [await notes.insert({"title": f"n{i}", "password": "secret"}) for i in range(20)]
        plugin = WebSocketPlugin(port=0, resources={"notes": {"protected": ["password"]}},
                                 metrics=True)  # fmt: skip
        await db.use_plugin(plugin)
        async with connect(plugin.url) as client:
            first = await client.call("list", resource="notes")  # builds the id-set: 1 LIST
            db.storage.requests.reset()
            page = await client.call("list", resource="notes")
            assert [r["id"] for r in page["data"]] == [r["id"] for r in made]
            assert page["data"] == first["data"] and all("password" not in r for r in page["data"])
            sub = await client.call("subscribe", resource="notes", snapshot=True)
            assert len(sub["data"]) == 20
            got = await client.call("get", resource="notes", id=made[5]["id"])
            assert got["data"]["title"] == "n5" and "password" not in got["data"]
            assert got["version"] == 1
            assert counts(db) == {}  # list, snapshot and get: no store request
            assert (await notes.get(made[0]["id"]))["password"] == "secret"  # cache not filtered
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{plugin.http_url}/metrics") as resp:
                text = await resp.text()
        hits = next(line for line in text.splitlines() if line.startswith("s3db_cache_hits_total"))
        assert float(hits.split()[1]) >= 40, text
        assert "s3db_cache_bytes " in text and "s3db_cache_flushes_total 0.0" in text
    finally:
        await db.disconnect()


async def test_without_id_sets_a_hot_list_is_one_list_validated_by_etags(s3_server):
    store = s3_server.url(f"cache-{uuid.uuid4().hex[:12]}")
    raw = Database(store)  # writes without the broker
    await raw.connect()
    outside = await raw.create_resource("things", ITEM, partitions={"byRoom": {"fields": {"room": "string"}}})
    made = [await outside.insert({"n": i}) for i in range(20)]
    db = await open_cached(store, max_stale=3600, lists=False)
    things = db.resources.things
    assert len((await things.list(limit=100)).items) == 20  # fills every record (with its ETag)
    db.storage.requests.reset()
    assert len((await things.list(limit=100)).items) == 20
    assert counts(db) == {"LIST": 1}  # hot: one LIST, no GET
    await outside.update(made[3]["id"], {"n": 33})  # bypasses the stream
    db.storage.requests.reset()
    page = await things.list(limit=100)
    assert page.items[3]["n"] == 33 and counts(db) == {"LIST": 1, "GET": 1}  # only what changed
    await raw.disconnect()
    await db.disconnect()


async def test_a_database_restarted_in_the_process_starts_with_an_empty_cache(redis_url):
    store = memory_url()
    broker = f"{redis_url}?prefix=c{uuid.uuid4().hex[:8]}"
    a = await open_cached(store, broker)
    rec = await a.resources.things.insert({"n": 1})
    await a.disconnect()
    assert a.stats.cache_bytes == 0
    await a.connect()
    a.storage.requests.reset()
    assert await a.resources.things.get(rec["id"]) == rec and counts(a) == {"GET": 1}
    await a.resources.things.update(rec["id"], {"n": 2})
    a.storage.requests.reset()
    assert (await a.resources.things.get(rec["id"]))["n"] == 2 and counts(a) == {}
    await a.disconnect()


async def test_overlapping_store_reads_never_step_a_cached_record_back():
    """Two store reads of a record overlap (a sweep's re-read and a get, or two gets): the one
    that began first may end last with an older state; it never replaces what the other kept,
    so a process never reads a record backwards."""
    store = memory_url()
    db = await open_cached(store)
    items, cache = db.resources.things, db.cache
    assert cache is not None
    other = Database(store)  # writes the same store without this cache's broker
    await other.connect()
    outside = await other.create_resource("things", ITEM)
    rec = await items.insert({"n": 1})
    for keep_older in (cache._force, cache.fill):
        cache.flush()  # the next read asks the store
        old_begun = cache.begin()  # the first read begins...
        old = await items.get_versioned(rec["id"])  # ...and reads the record as it was
        assert old is not None
        newer = await outside.update(rec["id"], {"n": old.record["n"] + 1})
        got = await items.get(rec["id"])  # a second read reads the newer state and keeps it
        assert got == newer
        keep_older("things", rec["id"], old.record, old.etag, old.version, old_begun)
        assert await items.get(rec["id"]) == newer  # never back to what the first read saw
    await other.disconnect()
    await db.disconnect()


async def test_a_late_insert_never_replaces_a_newer_read_of_the_same_incarnation():
    """The insert of a record reaches this process after a store read already found the record
    updated (its stamp is taken after the write, so it may be later than the read's start)."""
    db = await open_cached(memory_url())
    items, cache = db.resources.things, db.cache
    assert cache is not None
    rec = await items.insert({"n": 1})
    updated = await items.update(rec["id"], {"n": 2})
    cache.flush()
    assert await items.get(rec["id"]) == updated  # a fill of version 2
    late = Change("things", "insert", rec, None, int(time.time() * 1000) + 60_000, 1)
    cache.on_change(late)
    assert await items.get(rec["id"]) == updated
    await items.delete(rec["id"])  # a newer incarnation comes after its tombstone
    again = await items.insert({"id": rec["id"], "n": 3})
    assert await items.get(rec["id"]) == again
    await db.disconnect()


async def test_a_sweep_tombstone_is_not_undone_by_an_older_incarnation_published_late():
    """A writer's outage buffer drains late: the insert of an incarnation long deleted reaches
    this process after its sweep found the record gone from the store. The tombstone is a store
    read like a fill: a change stamped before the sweep began is older, never brings the
    record back (a read after "not found" saw the dead incarnation again)."""
    store = memory_url()
    db = await open_cached(store)
    raw = Database(store)  # another program: same store, no shared broker
    await raw.connect()
    outside = await raw.create_resource("things", ITEM, partitions={"byRoom": {"fields": {"room": "string"}}})
    items, cache = db.resources.things, db.cache
    assert cache is not None
    old = await items.insert({"n": 1})
    late = Change("things", "insert", old, None, int(time.time() * 1000), 1)  # held, not published
    await items.delete(old["id"])
    again = await items.insert({"id": old["id"], "n": 3})
    assert await items.get(old["id"]) == again
    await outside.delete(old["id"])
    assert await cache.sweep() == 1
    assert cache.lookup("things", old["id"]) == (True, None)
    cache.on_change(late)
    assert await items.get_or_none(old["id"]) is None
    await raw.disconnect()
    await db.disconnect()


async def test_the_memory_the_cache_holds_is_close_to_the_bytes_it_accounts():
    """``max_bytes`` bounds what the cache accounts (its records' JSON plus a fixed cost each);
    the memory it really holds must be near that, or the bound means little. (``orjson.dumps``
    returns bytes that keep the 4 KiB buffer they were written into: kept as they were, a
    record of 230 bytes held 4.4 KB.)"""
    import gc
    import tracemalloc

    db = await open_cached(memory_url())
    try:
        notes = await db.create_resource("notes", {"text": "string", "n": "number"})
        count = 300
        for n in range(count):
            await notes.insert({"text": "x" * 200, "n": n})
        db.cache.flush()
        gc.collect()
        tracemalloc.start(2)
        try:
            assert len(await notes.query()) == count
            gc.collect()
            held = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(True, "*s3db_core/cache.py")]
            )
        finally:
            tracemalloc.stop()
        total = sum(stat.size for stat in held.statistics("filename"))
        accounted = db.cache.bytes + db.cache.id_bytes
        assert accounted > count * 230
        assert total < 2 * accounted, (total / count, accounted / count)
    finally:
        await db.disconnect()
