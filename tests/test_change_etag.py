"""Every change carries the ETag of the object its write left in the store (the deleted one's
for a delete), on every broker: a store event feed recognises by it the writes that the stream
already carried."""

from __future__ import annotations

from pathlib import Path

from broker_helpers import eventually, open_db


async def test_each_change_carries_the_stored_etag(tmp_path: Path, broker_url: str) -> None:
    db, seen = await open_db(f"file://{tmp_path / 'store'}", broker_url)
    try:
        notes = db.resources.notes
        record = await notes.insert({"text": "a"})
        inserted = (await notes.get_versioned(record["id"])).etag
        await notes.update(record["id"], {"text": "b"})
        updated = (await notes.get_versioned(record["id"])).etag
        await notes.delete(record["id"])
        await eventually(lambda: len(seen.of("notes")) == 3, "three changes")
        etags = [c.etag for c in seen.of("notes")]
        assert etags == [inserted, updated, updated]  # the delete names the object it removed
        assert inserted != updated and inserted.startswith('"')
    finally:
        await db.disconnect()


def test_the_etag_survives_positioning_copies_and_pickling() -> None:
    import pickle

    from s3db_core import Change

    by_hand = Change("notes", "insert", {"id": "a"}, None, 1, 1, etag='"e1"')
    assert by_hand.positioned(3, "x").etag == '"e1"'  # a copy
    own = Change.for_stream("notes", "insert", {"id": "a"}, None, 1, 1, '"e2"')
    assert own.positioned(4, "x").etag == '"e2"'  # in place
    assert pickle.loads(pickle.dumps(own)).etag == '"e2"'
    assert by_hand != Change("notes", "insert", {"id": "a"}, None, 1, 1, etag='"other"')
