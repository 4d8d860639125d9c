"""Per record, changes are announced in commit order, with partition moves in between; a change
listener may write the record it was told about without waiting for itself."""

from __future__ import annotations

import asyncio

from s3db_core import hookimpl


async def test_concurrent_updates_moving_partitions_are_announced_in_commit_order(db):
    seen: list[tuple[str, int, int]] = []

    class Listener:
        @hookimpl
        async def s3db_change(self, change):
            await asyncio.sleep(0)  # a listener that yields mid-delivery
            seen.append((change.event, change.version, change.record.get("n", -1)))

    await db.use_plugin(Listener())
    items = await db.create_resource(
        "items", {"room": "string", "n": "number"}, partitions={"byRoom": {"fields": {"room": "string"}}}
    )
    rec = await items.insert({"room": "r0", "n": 0})

    def move(current):
        return {"n": current["n"] + 1, "room": f"r{(current['n'] + 1) % 3}"}

    await asyncio.gather(*(items.update(rec["id"], move) for _ in range(60)))
    await items.delete(rec["id"])
    assert [v for _, v, _ in seen] == [1, *range(2, 62), 61]
    assert [n for e, _, n in seen if e == "update"] == list(range(1, 61))  # commit order
    assert [k for k in (await db.storage.list("resource=items/partition=")).keys] == []


async def test_a_listener_may_update_the_record_it_was_told_about(db):
    items = await db.create_resource("items", {"n": "number", "seen": "boolean|optional"})

    class Stamp:
        @hookimpl
        async def s3db_change(self, change):
            if change.event == "update" and not change.record.get("seen"):
                await items.update(change.record["id"], {"seen": True})

    await db.use_plugin(Stamp())
    rec = await items.insert({"n": 1})
    await asyncio.wait_for(items.update(rec["id"], {"n": 2}), 10)
    assert await items.get(rec["id"]) == {"id": rec["id"], "n": 2, "seen": True}
