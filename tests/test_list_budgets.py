"""A listing's scan budget and the cost of a newest-first page, on every store.

`Resource.list(..., scan_limit=n)` reads at most n records; the page then ends early with a
cursor after the last record read, so a filter that matches nothing walks the resource a bounded
step per call instead of all at once. A `desc` page costs the same LIST requests as an `asc` one
for any resource of up to 10,000 records (it used to list 1,000 keys per request).
"""

from __future__ import annotations

import time

from s3db_core import Database


async def numbered(url: str, n: int) -> Database:
    db = Database(url)
    await db.connect()
    await db.create_resource("things", {"n": "number|required", "kind": "string|optional"})
    for i in range(n):
        await db.resources.things.insert({"n": i, "kind": "odd" if i % 2 else "even"})
    return db


async def test_scan_limit_ends_a_page_that_matches_nothing_with_a_cursor(storage_url):
    db = await numbered(storage_url, 30)
    try:
        items = db.resources.things
        storage = db.storage
        seen, cursor, calls = 0, None, 0
        while True:
            storage.requests.reset()
            page = await items.list({"n": {"$gt": 1000}}, limit=10, cursor=cursor, scan_limit=8)
            calls += 1
            assert page.items == []
            assert storage.requests["GET"] <= 8  # never more records read than the budget
            seen += storage.requests["GET"]
            if page.cursor is None:
                break
            cursor = page.cursor
        assert seen == 30  # every record read exactly once across the calls
        assert calls == 4
    finally:
        await db.disconnect()


async def test_scan_limit_keeps_what_matched_and_resumes_after_the_last_read(storage_url):
    db = await numbered(storage_url, 20)
    try:
        items = db.resources.things
        found, cursor = [], None
        for order in ("asc", "desc"):
            found, cursor = [], None
            while True:
                page = await items.list(
                    {"kind": "odd"}, limit=50, cursor=cursor, order=order, scan_limit=7
                )
                assert len(page.items) <= 4
                found += [r["n"] for r in page.items]
                if page.cursor is None:
                    break
                cursor = page.cursor
            expected = list(range(1, 20, 2))
            assert found == (expected if order == "asc" else expected[::-1])
    finally:
        await db.disconnect()


async def test_where_is_a_further_test_and_the_page_still_fills(storage_url):
    db = await numbered(storage_url, 12)
    try:
        page = await db.resources.things.list(limit=3, where=lambda r: r["n"] % 3 == 0)
        assert [r["n"] for r in page.items] == [0, 3, 6]
        assert page.cursor is not None
        rest = await db.resources.things.list(limit=3, cursor=page.cursor, where=lambda r: r["n"] % 3 == 0)
        assert [r["n"] for r in rest.items] == [9]
    finally:
        await db.disconnect()


async def test_newest_first_costs_no_more_lists_than_oldest_first(tmp_path):
    db = Database(f"file://{tmp_path / 'store'}")
    await db.connect()
    try:
        await db.create_resource("things", {"n": "number|required"})
        items = db.resources.things
        for i in range(2500):
            await items.insert({"n": i})
        costs = {}
        for order in ("asc", "desc"):
            db.storage.requests.reset()
            started = time.process_time()
            page = await items.list(limit=1, order=order)
            costs[order] = (db.storage.requests["LIST"], time.process_time() - started)
            assert [r["n"] for r in page.items] == [0 if order == "asc" else 2499]
        assert costs["desc"][0] == costs["asc"][0] == 1
        # CPU time (the store's threads included), not wall time: the OS may run others.
        assert costs["desc"][1] < 5 * costs["asc"][1] + 0.05
    finally:
        await db.disconnect()


async def test_max_bytes_ends_the_page_and_reads_big_records_a_few_at_a_time(storage_url):
    db = Database(storage_url)
    await db.connect()
    try:
        await db.create_resource("blobs", {"n": "number|required", "data": "string|optional"})
        blobs = db.resources.blobs
        for i in range(40):
            await blobs.insert({"n": i, "data": "x" * 100_000})
        got, cursor, pages = [], None, 0
        while True:
            db.storage.requests.reset()
            page = await blobs.list(limit=40, cursor=cursor, max_bytes=350_000)
            pages += 1
            assert 1 <= len(page.items) <= 4
            # Reads stop soon after the budget: never the 40 records the limit asked for.
            assert db.storage.requests["GET"] <= 8
            got += [r["n"] for r in page.items]
            if page.cursor is None:
                break
            cursor = page.cursor
        assert got == list(range(40)) and pages == 10
        # Small records: one page as before.
        await db.create_resource("small", {"n": "number|required"})
        for i in range(30):
            await db.resources.small.insert({"n": i})
        page = await db.resources.small.list(limit=30, max_bytes=1 << 20)
        assert len(page.items) == 30 and page.cursor is None
    finally:
        await db.disconnect()
