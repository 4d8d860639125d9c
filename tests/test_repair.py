"""Damage contained and repaired: records missing from partitions, stale references, damaged
objects, temp files of killed writers, several writer processes and kill -9 of one."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from s3db_core import DamagedRecordError, Database

PEOPLE = {"name": "string", "room": "string"}
PARTS = {"byRoom": {"fields": {"room": "string"}}}


async def _ids(resource, **filter) -> list[str]:
    return sorted(r["id"] for r in await resource.query(filter or None))


async def test_repair_restores_listings_and_removes_stale_references(db):
    people = await db.create_resource("people", PEOPLE, partitions=PARTS)
    a = await people.insert({"name": "a", "room": "r1"})
    b = await people.insert({"name": "b", "room": "r1"})
    storage = db.storage
    # Damage as an older version killed mid-write left it: a record without its reference, a
    # reference without its record, a reference to a partition the record has left.
    await storage.delete(people._partition_keys(a)["byRoom"])
    await storage.put("resource=people/partition=byRoom/room=r1/id=ghost", b"", {})
    await storage.put(people._partition_keys({**b, "room": "r9"})["byRoom"], b"", {})
    assert await _ids(people, room="r1") == [b["id"]]  # a is missing from its partition

    report = await db.repair(dry_run=True)
    assert not report.clean and await _ids(people, room="r1") == [b["id"]]  # dry run: unchanged
    report = await db.repair()
    found = report.resources["people"]
    assert found.records == 2 and found.damaged == []
    assert found.references_added == [people._partition_keys(a)["byRoom"]]
    assert len(found.references_removed) == 2
    assert await _ids(people, room="r1") == sorted([a["id"], b["id"]])
    assert await _ids(people, room="r9") == []
    assert (await db.repair()).clean


async def test_fresh_references_are_left_to_the_write_in_flight(db):
    people = await db.create_resource("people", PEOPLE, partitions=PARTS)
    key = "resource=people/partition=byRoom/room=r1/id=inflight"
    await db.storage.put(key, people._ref_body(), {})  # an insert that has not committed yet
    report = await db.repair()
    assert report.resources["people"].references_removed == []
    assert (await db.repair(grace=0)).resources["people"].references_removed == [key]


async def test_a_damaged_record_is_contained(db):
    people = await db.create_resource("people", PEOPLE, partitions=PARTS)
    good = await people.insert({"name": "a", "room": "r1"})
    bad = await people.insert({"name": "b", "room": "r1"})
    await db.storage.put(people._key(bad["id"]), b"truncated", {"sv": "1", "sb": "1"})
    with pytest.raises(DamagedRecordError) as caught:
        await people.get(bad["id"])
    assert caught.value.key == people._key(bad["id"]) and caught.value.key in str(caught.value)
    assert caught.value.code == "STORAGE_ERROR"
    with capture_logs() as logs:
        assert await _ids(people) == [good["id"]]
        assert [r["id"] for r in (await people.list(filter={"room": "r1"})).items] == [good["id"]]
    assert db.stats.damaged_records == 2 and db.stats.snapshot() == {"damaged_records": 2}
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 2 and all(e["key"] == people._key(bad["id"]) and e["error_id"] for e in errors)
    report = await db.repair()
    assert report.resources["people"].damaged == [people._key(bad["id"])]


async def test_a_truncated_file_is_a_damaged_record(tmp_path):
    db = Database(f"file://{tmp_path}")
    await db.connect()
    try:
        people = await db.create_resource("people", PEOPLE)
        rec = await people.insert({"name": "a", "room": "r"})
        other = await people.insert({"name": "b", "room": "r"})
        path = db.storage._path(people._key(rec["id"]))
        path.write_bytes(path.read_bytes()[:9])
        with pytest.raises(DamagedRecordError):
            await people.get(rec["id"])
        assert await _ids(people) == [other["id"]]
    finally:
        await db.disconnect()


WRITER = """
import asyncio, sys
import structlog
from s3db_core import Database

structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # stdout carries the acks

async def main(url, mode, n):
    db = Database(url)
    await db.connect()
    r = await db.create_resource("people", {"name": "string", "room": "string"},
                                 partitions={"byRoom": {"fields": {"room": "string"}}})
    if mode == "count":
        c = await db.create_resource("counters", {"n": "number"})
        for _ in range(n):
            await c.update("c", lambda cur: {"n": cur["n"] + 1})
    else:
        i = 0
        while True:
            rec = await r.insert({"name": f"p{i}", "room": f"r{i % 3}"})
            if i % 2:
                await r.update(rec["id"], {"room": f"r{(i + 1) % 3}"})
                rec["room"] = f"r{(i + 1) % 3}"
            print(rec["id"], rec["room"], flush=True)
            i += 1

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def _writer(url: str, mode: str, n: int = 0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, url, mode, str(n)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )


async def test_writer_processes_sharing_a_file_store_lose_no_update(tmp_path):
    url = f"file://{tmp_path}"
    db = Database(url)
    await db.connect()
    try:
        counters = await db.create_resource("counters", {"n": "number"})
        await counters.insert({"id": "c", "n": 0})
        procs = [_writer(url, "count", 15) for _ in range(4)]
        for proc in procs:
            assert await asyncio.to_thread(proc.wait, 60) == 0
        found = await counters.get_versioned("c")
        assert (found.record["n"], found.version) == (60, 61)
    finally:
        await db.disconnect()


async def test_kill_9_of_a_file_writer_leaves_every_acknowledged_record_listed(tmp_path):
    url = f"file://{tmp_path}"
    proc = _writer(url, "insert")
    acked: list[tuple[str, str]] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while len(acked) < 40 and time.monotonic() < deadline:
        line = await asyncio.to_thread(proc.stdout.readline)
        if line:
            id, room = line.split()
            acked.append((id, room))
    os.kill(proc.pid, signal.SIGKILL)  # mid-write, somewhere
    proc.wait()
    assert len(acked) == 40
    db = Database(url)
    await db.connect()
    try:
        people = await db.create_resource("people", PEOPLE, partitions=PARTS)
        stored = await people.query()
        for room in ("r0", "r1", "r2"):
            listed = set(await _ids(people, room=room))
            assert {id for id, r in acked if r == room} <= listed
            # Even a record whose write was cut short is listed where it belongs, if it exists.
            assert {r["id"] for r in stored if r["room"] == room} == listed
        (tmp_path / "resource=people" / "data" / "x%o.deadbeef%t").write_bytes(b"half")
        old = time.time() - 3600
        os.utime(tmp_path / "resource=people" / "data" / "x%o.deadbeef%t", (old, old))
        fresh = len(list(tmp_path.rglob("*%t"))) - 1  # what the killed writer may have left
        report = await db.repair()  # the old one goes; a fresh one may be a write in progress
        assert report.temp_files_removed == 1 and len(list(tmp_path.rglob("*%t"))) == fresh
        await db.repair(grace=0)  # the writer is gone: nothing is in progress
        assert not list(tmp_path.rglob("*%t"))
    finally:
        await db.disconnect()


def test_repair_command_prints_its_report(tmp_path):
    async def damage() -> str:
        db = Database(f"file://{tmp_path}")
        await db.connect()
        people = await db.create_resource("people", PEOPLE, partitions=PARTS)
        rec = await people.insert({"name": "a", "room": "r1"})
        await db.storage.delete(people._partition_keys(rec)["byRoom"])
        await db.disconnect()
        return rec["id"]

    id = asyncio.run(damage())
    s3db = Path(sys.executable).parent / "s3db"
    out = subprocess.run([s3db, "repair", f"file://{tmp_path}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["resources"]["people"]["references_added"] == [
        f"resource=people/partition=byRoom/room=r1/id={id}"
    ]
    bad = subprocess.run([s3db, "repair", "nope://x"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "nope" in bad.stderr
