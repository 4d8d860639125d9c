"""A long repair is never silent: ``db.repair(progress=...)`` reports where it is (the library
prints nothing), and ``s3db repair`` shows it: a status line redrawn in place on a terminal (a
real pty here), progress log lines otherwise, and a summary at the end."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from s3db_core import Database
from s3db_core.repair import RepairProgress

S3DB = str(Path(sys.executable).parent / "s3db")
ROOT = Path(__file__).resolve().parent.parent
PEOPLE = {"name": "string", "room": "string"}
PARTS = {"byRoom": {"fields": {"room": "string"}}}


async def fill(db: Database, count: int) -> list[str]:
    """``count`` people in a partitioned resource, plus damage: the partition references of
    the first 7 removed (missing) and 3 references to records that do not exist (stale)."""
    people = await db.create_resource("people", PEOPLE, partitions=PARTS)
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> dict:
        async with sem:
            return await people.insert({"name": f"p{i}", "room": f"r{i % 5}"})

    records = await asyncio.gather(*(one(i) for i in range(count)))
    for rec in records[:7]:
        await db.storage.delete(people._partition_keys(rec)["byRoom"])
    for i in range(3):
        key = f"resource=people/partition=byRoom/room=r0/id=gone{i}"
        await db.storage.put(key, b"1", {})  # written long ago: old enough to remove
    return [r["id"] for r in records]


async def test_the_library_reports_progress_and_prints_nothing(db, capsys):
    await fill(db, 300)
    seen: list[RepairProgress] = []
    report = await db.repair(grace=0, progress=lambda p: seen.append(replace(p)))
    assert capsys.readouterr() == ("", "")
    phases = [p for p in dict.fromkeys(p.phase for p in seen) if p != "temp files"]  # file://
    assert phases == ["records", "references", "done"], phases
    keys = [p.keys for p in seen]
    assert keys == sorted(keys) and len(seen) > 300  # after every object, not only at the end
    last = seen[-1]
    people = report.resources["people"]
    assert last.records == people.records == 300
    assert last.references_missing == len(people.references_added) == 7
    assert last.references_stale == len(people.references_removed) == 3
    # 300 records, the references listed, and each stale candidate read again.
    assert last.keys == 300 + (300 - 7 + 3) + 3
    # Found-so-far counts grow during the walk, not only at its end.
    assert any(0 < p.references_missing < 7 or p.phase == "records" for p in seen)


def _fill_store(path: Path, count: int) -> None:
    async def main() -> None:
        async with Database(f"file://{path}") as db:
            await fill(db, count)

    asyncio.run(main())


def test_repair_logs_progress_lines_when_stderr_is_not_a_terminal(tmp_path):
    _fill_store(tmp_path, 1200)
    done = subprocess.run(
        [S3DB, "repair", f"file://{tmp_path}", "--grace", "0", "--progress-every", "500"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # stdout is the report alone
    assert len(report["resources"]["people"]["references_added"]) == 7
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    progress = [r for r in lines if r["event"] == "repair progress"]
    assert len(progress) >= 3, lines  # 1,200 records + 1,196 references: every 500 keys
    keys = [r["keys"] for r in progress]
    assert keys == sorted(keys) and all(b - a >= 500 for a, b in zip(keys, keys[1:], strict=False))
    assert {r["resource"] for r in progress} == {"people"}
    assert all(r["keys_per_second"] > 0 and "references_missing" in r for r in progress)
    final = lines[-1]
    assert final["event"] == "repair done", lines
    assert final["records"] == 1200 and final["keys"] == 1200 + 1196 + 3
    assert (final["references_missing"], final["references_stale"]) == (7, 3)


def test_repair_draws_a_status_line_on_a_terminal(tmp_path):
    _fill_store(tmp_path, 1200)
    master, slave = pty.openpty()
    started = time.monotonic()
    proc = subprocess.Popen(
        [S3DB, "repair", f"file://{tmp_path}", "--dry-run"],
        stdout=subprocess.PIPE,
        stderr=slave,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )
    os.close(slave)
    screen = b""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed its end
                    break
                if not chunk:
                    break
                screen += chunk
            elif proc.poll() is not None:
                break
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, screen
    text = screen.decode()
    redraws = re.findall(r"\rrepair people \((records|references)\): [\d,]+ keys, [\d,]+/s;[^\r\n]*\x1b\[K", text)
    assert redraws, text
    assert len(redraws) <= elapsed / 0.2 + 2  # at most five times a second
    assert "\n" not in text.split("repair done")[0]  # the status line stays on one line
    summary = re.search(r"\r\x1b\[Krepair done in [\d.]+ s: ([\d,]+) keys .*\r?\n", text)
    assert summary, text
    assert "7 references to add, 3 stale references to remove" in text
    assert json.loads(out)["dry_run"] is True
