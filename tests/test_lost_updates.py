"""No lost update: 60 concurrent read-modify-write updaters of one counter, through every update
API, on every backend (SeaweedFS included), end with the counter at exactly 60."""

from __future__ import annotations

import asyncio
import random

import pytest

from s3db_core import ConflictError, Database, ForbiddenError, hookimpl

WRITERS = 60


@pytest.fixture
async def counter(db):
    counters = await db.create_resource("counters", {"n": "number", "owner": "string|optional"})
    return counters, await counters.insert({"n": 0})


async def _retrying(attempt) -> None:
    """What an app does when its compare-and-set loses: read again and retry."""
    for tries in range(500):
        try:
            await attempt()
            return
        except ConflictError:
            await asyncio.sleep(random.uniform(0, min(0.4, 0.005 * 2**tries)))
    raise AssertionError("never won")


async def _final(counters, rec) -> tuple[int, int]:
    found = await counters.get_versioned(rec["id"])
    return found.record["n"], found.version


async def test_update_with_a_function_is_re_run_on_every_retry(counter):
    counters, rec = counter
    calls = 0

    def bump(current):
        nonlocal calls
        calls += 1
        return {"n": current["n"] + 1}

    await asyncio.gather(*(counters.update(rec["id"], bump) for _ in range(WRITERS)))
    assert await _final(counters, rec) == (WRITERS, WRITERS + 1)
    assert calls >= WRITERS


async def test_async_function_too(counter):
    counters, rec = counter

    async def bump(current):
        await asyncio.sleep(0)
        return {"n": current["n"] + 1}

    await asyncio.gather(*(counters.update(rec["id"], bump) for _ in range(WRITERS)))
    assert (await _final(counters, rec))[0] == WRITERS


async def test_before_update_hook_reading_current_runs_on_every_retry(db, counter):
    counters, rec = counter

    class Increment:
        @hookimpl
        def s3db_before_update(self, resource, id, data, current):
            if data.pop("increment", False):
                data["n"] = current["n"] + 1

    await db.use_plugin(Increment())
    await asyncio.gather(*(counters.update(rec["id"], {"increment": True}) for _ in range(WRITERS)))
    assert (await _final(counters, rec))[0] == WRITERS


async def test_current_passed_by_the_caller_is_compare_and_set(counter):
    counters, rec = counter

    async def once():
        found = await counters.get_versioned(rec["id"])
        await counters.update(rec["id"], {"n": found.record["n"] + 1}, current=found)

    await asyncio.gather(*(_retrying(once) for _ in range(WRITERS)))
    assert (await _final(counters, rec))[0] == WRITERS


async def test_expected_version_is_compare_and_set(counter):
    counters, rec = counter

    async def once():
        found = await counters.get_versioned(rec["id"])
        await counters.update(rec["id"], {"n": found.record["n"] + 1}, expected_version=found.version)

    await asyncio.gather(*(_retrying(once) for _ in range(WRITERS)))
    assert (await _final(counters, rec))[0] == WRITERS


async def test_check_runs_against_the_record_each_retry_replaces(counter):
    """A guard passed as ``check`` sees every attempt's record: once the counter belongs to
    someone else, the remaining writers are refused instead of writing on a stale decision."""
    counters, rec = counter
    seen: list[int] = []

    def check(current):
        seen.append(current["n"])
        if current.get("owner") == "mallory":
            raise ForbiddenError("not yours any more")

    found = await counters.get_versioned(rec["id"])
    await counters.update(rec["id"], {"owner": "mallory"})
    with pytest.raises(ForbiddenError):
        await counters.update(rec["id"], {"n": 99}, current=found, check=check)
    assert seen == [0, 0]  # the stale record, then the one actually being replaced
    assert (await counters.get(rec["id"]))["n"] == 0

    def bump(current):
        return {"n": current["n"] + 1}

    results = await asyncio.gather(
        *(counters.update(rec["id"], bump, check=lambda c: None) for _ in range(WRITERS))
    )
    assert sorted(r["n"] for r in results) == list(range(1, WRITERS + 1))


async def test_writers_of_separate_databases_on_one_store_lose_nothing(storage_url, counter):
    """Four Database objects on one store (as four processes would be: no shared lock) race
    through the ETag alone."""
    counters, rec = counter
    dbs = [Database(storage_url) for _ in range(4)]
    for other in dbs:
        await other.connect()
    try:
        resources = [await other.create_resource("counters", counters.attributes) for other in dbs]

        def bump(current):
            return {"n": current["n"] + 1}

        await asyncio.gather(*(resources[i % 4].update(rec["id"], bump) for i in range(WRITERS)))
    finally:
        for other in dbs:
            await other.disconnect()
    assert await _final(counters, rec) == (WRITERS, WRITERS + 1)
