"""The record's system version: 1 on insert, +1 per update, on every change, never a record key."""

from __future__ import annotations

import pytest

from s3db_core import ConflictError, ValidationError, hookimpl


class Recorder:
    def __init__(self) -> None:
        self.changes: list = []

    @hookimpl
    def s3db_change(self, change) -> None:
        self.changes.append(change)


async def test_version_counts_writes_and_rides_on_every_change(db):
    recorder = Recorder()
    await db.use_plugin(recorder)
    docs = await db.create_resource("documents", {"title": "string", "version": "number|optional"})
    rec = await docs.insert({"title": "a", "version": 7})
    found = await docs.get_versioned(rec["id"])
    record, etag = found  # still unpacks as (record, etag)
    assert found.version == 1 and record == rec and etag == found.etag
    assert rec["version"] == 7  # the record's own attribute is untouched
    await docs.update(rec["id"], {"title": "b"})
    await docs.update(rec["id"], {"version": 8})
    after = await docs.get_versioned(rec["id"])
    assert after.version == 3 and after.record["version"] == 8 and after.record["title"] == "b"
    deleted = await docs.delete(rec["id"])
    assert "version" in deleted and deleted["version"] == 8
    assert [(c.event, c.version) for c in recorder.changes] == [
        ("insert", 1), ("update", 2), ("update", 3), ("delete", 3)
    ]


async def test_version_is_not_writable_by_callers(db):
    items = await db.create_resource("items", {"n": "number"})
    rec = await items.insert({"n": 1})
    with pytest.raises(ValidationError):  # not a field: unknown fields are refused
        await items.update(rec["id"], {"sr": 99})
    await items.update(rec["id"], {"n": 2})
    assert (await items.get_versioned(rec["id"])).version == 2


async def test_expected_version_is_compare_and_set(db):
    items = await db.create_resource("items", {"n": "number"})
    rec = await items.insert({"n": 1})
    updated = await items.update(rec["id"], {"n": 2}, expected_version=1)
    assert updated["n"] == 2
    with pytest.raises(ConflictError, match="version 2"):
        await items.update(rec["id"], {"n": 3}, expected_version=1)
    assert (await items.get(rec["id"]))["n"] == 2
    await items.update(rec["id"], {"n": 3}, expected_version=2)
    assert (await items.get_versioned(rec["id"])).version == 3
    with pytest.raises(ValidationError):
        await items.update(rec["id"], {"n": 4}, expected_version="3")  # type: ignore[arg-type]


def test_versioned_keeps_its_version_through_copy_and_pickle():
    import copy
    import pickle

    from s3db_core import Versioned

    found = Versioned({"id": "a", "n": {"m": 1}}, '"etag"', 3)
    for twin in (copy.copy(found), copy.deepcopy(found), pickle.loads(pickle.dumps(found))):
        assert twin == found and twin.version == 3 and twin.record == {"id": "a", "n": {"m": 1}}
