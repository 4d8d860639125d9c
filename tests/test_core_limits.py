"""Nested merge, input limits checked before any store request, guarded delete, and write order
of partition references, on memory, file and the real S3 server."""

from __future__ import annotations

import pytest

from s3db_core import ConflictError, Database, ValidationError, hookimpl


@pytest.fixture
async def people(db):
    return await db.create_resource(
        "people",
        {"name": "string", "profile": "json|optional", "tags": "array|optional", "room": "string|optional"},
        partitions={"byRoom": {"fields": {"room": "string"}}},
    )


def counts(db) -> dict[str, int]:
    return db.storage.requests.snapshot()


async def test_update_merges_nested_objects(people):
    rec = await people.insert(
        {"name": "a", "profile": {"city": "Oslo", "ssn": "123", "links": {"web": "w", "x": "y"}}, "tags": [1, 2]}
    )
    # The client sends back the profile it was shown (without ssn), edited: ssn survives.
    updated = await people.update(rec["id"], {"profile": {"city": "Rome", "links": {"web": None}}, "tags": [3]})
    assert updated["profile"] == {"city": "Rome", "ssn": "123", "links": {"web": None, "x": "y"}}
    assert updated["tags"] == [3]  # arrays replace
    updated = await people.update(rec["id"], {"profile.city": "Paris", "profile.home.floor": 2})
    assert updated["profile"] == {"city": "Paris", "ssn": "123", "links": {"web": None, "x": "y"}, "home": {"floor": 2}}
    assert await people.get(rec["id"]) == updated
    updated = await people.update(rec["id"], {"profile": None})  # null replaces
    assert updated["profile"] is None
    with pytest.raises(ValidationError):
        await people.update(rec["id"], {"profile..city": "x"})


async def test_dotted_keys_below_the_top_are_plain_names(people):
    rec = await people.insert({"name": "a", "profile": {"files": {"a.txt": 1}}})
    updated = await people.update(rec["id"], {"profile": {"files": {"b.txt": 2}}})
    assert updated["profile"] == {"files": {"a.txt": 1, "b.txt": 2}}


def _deep(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels - 1):
        value = {"x": value}
    return value


async def test_depth_size_and_key_limits_are_checked_before_any_request(db, people):
    rec = await people.insert({"name": "a"})
    db.storage.requests.reset()
    with pytest.raises(ValidationError) as caught:
        await people.insert({"name": "b", "profile": _deep(1000)})
    assert caught.value.errors[0]["rule"] == "depth"
    with pytest.raises(ValidationError, match="32 levels"):
        await people.update(rec["id"], {"profile": _deep(40)})
    with pytest.raises(ValidationError, match="byte limit"):
        await people.insert({"name": "b", "profile": {"blob": "x" * (1024 * 1024 + 10)}})
    with pytest.raises(ValidationError) as caught:
        await people.insert({"id": "I" * 255, "name": "long id"})  # passes the id rules, not the store
    assert caught.value.errors[0]["field"] == "id"
    with pytest.raises(ValidationError) as caught:
        await people.insert({"name": "b", "room": "r" * 1000})
    assert caught.value.errors[0]["field"] == "room" and caught.value.errors[0]["rule"] == "key-length"
    assert counts(db) == {"GET": 1}  # only the update's read: nothing written, nothing half-written
    db.storage.requests.reset()
    with pytest.raises(ValidationError, match="room"):
        await people.update(rec["id"], {"room": "é" * 600})
    assert "PUT" not in counts(db)
    assert len(await people.query()) == 1
    assert (await db.storage.list("resource=people/partition=")).keys == []  # no stray reference
    assert (await people.insert({"name": "ok", "profile": _deep(31)}))["name"] == "ok"  # 32 levels


async def test_limits_are_configurable_per_database(storage_url):
    db = Database(storage_url, max_depth=3, max_record_size=2000)
    await db.connect()
    try:
        items = await db.create_resource("items", {"v": "json"})
        await items.insert({"v": {"a": {"b": 1}}})
        with pytest.raises(ValidationError, match="3 levels"):
            await items.insert({"v": {"a": {"b": {"c": 1}}}})
        with pytest.raises(ValidationError, match="2000-byte"):
            await items.insert({"v": "x" * 3000})
    finally:
        await db.disconnect()
    with pytest.raises(ValueError):
        Database(storage_url, max_depth=0)


async def test_delete_of_a_record_changed_since_it_was_read(db, people):
    rec = await people.insert({"name": "a"})
    stale = await people.get_versioned(rec["id"])
    await people.update(rec["id"], {"name": "b"})
    with pytest.raises(ConflictError):
        await people.delete(rec["id"], current=stale)
    assert (await people.get(rec["id"]))["name"] == "b"

    seen = []

    class Veto:
        @hookimpl
        async def s3db_before_delete(self, resource, id, current):
            seen.append(current["name"])
            if len(seen) == 1:  # someone renames it while this delete decides
                await people.storage.put(
                    people._key(id), *reversed(people._to_stored({**current, "name": "c"}, 9))
                )

    await db.use_plugin(Veto())
    deleted = await people.delete(rec["id"])
    assert seen == ["b", "c"] and deleted["name"] == "c"  # the hook saw what was deleted


async def test_partition_references_are_written_before_the_record(db, people):
    storage = db.storage
    order: list[tuple[str, bool]] = []
    put = storage.put

    async def recording_put(key, body, metadata, **kw):
        order.append((key.split("/")[1], await people.exists(key.rsplit("id=", 1)[1])))
        return await put(key, body, metadata, **kw)

    storage.put = recording_put
    try:
        rec = await people.insert({"name": "a", "room": "r1"})
        assert order == [("partition=byRoom", False), ("data", False)]
        order.clear()
        await people.update(rec["id"], {"room": "r2"})
        assert order == [("partition=byRoom", True), ("data", True)]
    finally:
        storage.put = put
    assert [r["id"] for r in (await people.list(filter={"room": "r2"})).items] == [rec["id"]]
    assert (await people.list(filter={"room": "r1"})).items == []
    assert len((await db.storage.list("resource=people/partition=")).keys) == 1  # r1's was removed
