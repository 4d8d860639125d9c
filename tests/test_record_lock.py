"""The per-record write lock of one process: writers of a record take turns (no update lost, each
version once), a writer cancelled while it waits neither blocks the others nor leaves the
record locked, a listener re-entering its own record does not wait for itself, and nothing is
left in the lock table afterwards. A lone writer creates no lock object at all."""

from __future__ import annotations

import asyncio

from s3db_core import Database, hookimpl


async def test_writers_take_turns_and_a_cancelled_waiter_leaves_nothing_behind():
    async with Database("memory://") as db:
        counters = await db.create_resource("counters", {"n": "number"})
        record = await counters.insert({"n": 0})
        id = record["id"]
        locks = counters._locks

        async def bump(current: dict) -> dict:
            await asyncio.sleep(0.01)  # hold the lock across a real suspension
            return {"n": current["n"] + 1}

        first = asyncio.create_task(counters.update(id, bump))
        await asyncio.sleep(0)  # the first writer is inside, alone: no lock object made
        assert locks._locks[id].lock is None and locks._locks[id].users == 1
        waiters = [asyncio.create_task(counters.update(id, bump)) for _ in range(5)]
        await asyncio.sleep(0)
        assert locks._locks[id].users == 6 and locks._locks[id].lock is not None
        waiters[2].cancel()
        results = await asyncio.gather(first, *waiters, return_exceptions=True)
        assert isinstance(results[3], asyncio.CancelledError)
        assert sorted(r["n"] for r in results if isinstance(r, dict)) == [1, 2, 3, 4, 5]
        stored = await counters.get_versioned(id)
        assert stored is not None and stored.record["n"] == 5 and stored.version == 6
        assert locks._locks == {} and locks._committed == {}

        # Cancelled while it waits behind the only other writer: that writer's release frees it.
        holder = asyncio.create_task(counters.update(id, bump))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(counters.update(id, bump))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(holder, waiter, return_exceptions=True)
        assert locks._locks == {}
        assert (await asyncio.wait_for(counters.update(id, {"n": 0}), 5))["n"] == 0


async def test_a_listener_updating_the_record_it_heard_about_does_not_wait_for_itself():
    async with Database("memory://") as db:
        notes = await db.create_resource("notes", {"text": "string", "seen": "number|optional"})

        class Stamp:
            @hookimpl
            async def s3db_change(self, change):
                if change.event == "update" and change.record.get("seen") is None:
                    await notes.update(change.record["id"], {"seen": change.version})

        await db.use_plugin(Stamp())
        record = await notes.insert({"text": "a"})
        await asyncio.wait_for(notes.update(record["id"], {"text": "b"}), 5)
        assert (await notes.get(record["id"]))["seen"] == 2
        assert notes._locks._locks == {}
