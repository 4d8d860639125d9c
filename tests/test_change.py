"""``Change``: immutable and compared like the frozen dataclass it was, built once per write
(the broker places the core's own change in its stream without copying it), and never changed
under a caller that built one by hand."""

from __future__ import annotations

import copy
import pickle
from dataclasses import FrozenInstanceError

import pytest

from s3db_core import Change, Database, hookimpl


def test_a_change_is_immutable_and_compared_by_its_fields():
    change = Change("notes", "insert", {"id": "a"}, None, 5, 1)
    assert (change.resource, change.event, change.record, change.previous) == ("notes", "insert", {"id": "a"}, None)
    assert (change.timestamp, change.version, change.offset, change.epoch) == (5, 1, None, None)
    with pytest.raises(FrozenInstanceError):
        change.offset = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del change.record  # type: ignore[misc]
    assert change == Change("notes", "insert", {"id": "a"}, None, 5, 1)
    assert change != Change("notes", "insert", {"id": "a"}, None, 5, 1, offset=1, epoch="e")
    assert change != ("notes", "insert")
    assert "resource='notes'" in repr(change) and "offset=None" in repr(change)
    assert pickle.loads(pickle.dumps(change)) == change
    assert copy.deepcopy(change) == change
    match change:
        case Change("notes", "insert", record):
            assert record == {"id": "a"}
        case _:
            pytest.fail("positional match")


def test_positioned_copies_a_change_someone_holds_and_places_the_cores_own():
    by_hand = Change("notes", "insert", {"id": "a"}, None, 5, 1)
    placed = by_hand.positioned(7, "e1")
    assert placed is not by_hand and by_hand.offset is None and (placed.offset, placed.epoch) == (7, "e1")
    assert placed.positioned(8, "e1").offset == 8 and placed.offset == 7  # placed: copied again

    own = Change.for_stream("notes", "update", {"id": "a"}, {"id": "a"}, 5, 2)
    assert own.positioned(9, "e1") is own and (own.offset, own.epoch) == (9, "e1")
    again = own.positioned(10, "e1")  # only the first placement is in place
    assert again is not own and own.offset == 9 and again.offset == 10
    assert pickle.loads(pickle.dumps(Change.for_stream("n", "insert", {}, None, 1, 1))).positioned(1, "e").offset == 1


async def test_a_write_publishes_one_change_object_and_a_hand_built_one_stays_unplaced():
    seen: list[Change] = []

    class Listener:
        @hookimpl
        def s3db_change(self, change):
            seen.append(change)

    async with Database("memory://") as db:
        await db.use_plugin(Listener())
        notes = await db.create_resource("notes", {"text": "string"})
        record = await notes.insert({"text": "a"})
        await notes.update(record["id"], {"text": "b"})
        assert [(c.event, c.offset, c.version) for c in seen] == [("insert", 1, 1), ("update", 2, 2)]
        assert db.broker._rings["notes"].changes[-1] is seen[-1]  # type: ignore[attr-defined]
        by_hand = Change("notes", "delete", record, record, 0, 2)
        published = await db.broker.publish(by_hand)
        again = await db.broker.publish(by_hand)  # the same object twice: two stream entries
        assert by_hand.offset is None and (published.offset, again.offset) == (3, 4)


def test_the_wire_form_keeps_integers_beyond_64_bits():
    """orjson refuses them; a record the store accepted must still be announced and read back
    exactly (the local broker sizes every change by its wire form inside the write)."""
    from s3db_core.brokers.base import decode_change, encode_change

    big = -(2**63) - 1
    change = Change("docs", "insert", {"id": "a", "n": big, "m": 2**70}, None, 1, 1)
    back = decode_change(encode_change(change), 5, "e")
    assert back.record == {"id": "a", "n": big, "m": 2**70}
    assert isinstance(back.record["m"], int)
