"""The SeaweedFS feed's reading of ``weed filer.meta.tail`` output: what a message means (put,
delete, rename, folders), and messages it cannot read skipped and counted, never fatal.

The end-to-end behaviour against the real ``weed`` is in test_watch.py; damaged output cannot be
had from a healthy ``weed``, so here a stand-in program prints it where ``?weed=`` points."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
from pathlib import Path

from s3db_core.feeds import FeedEvent
from s3db_core.feeds.seaweedfs import MAX_MESSAGE, SeaweedFSFeed

ETAG = "9dd4e461268c8034f5c8564e155c67a6"


def entry(name: str, directory: bool = False) -> dict:
    return {"name": name, "isDirectory": directory,
            "extended": {"Seaweed-X-Amz-ETag": base64.b64encode(ETAG.encode()).decode()}}  # fmt: skip


def message(ts: int, directory: str, old=None, new=None, parent: str = "") -> dict:
    return {"directory": directory, "tsNs": str(ts), "eventNotification": {
        "oldEntry": old, "newEntry": new, "newParentPath": parent, "signatures": [7]}}  # fmt: skip


def feed(url: str = "seaweedfs://127.0.0.1:8888?weed=/bin/true") -> SeaweedFSFeed:
    return SeaweedFSFeed(url, "bkt", "pre")


def test_messages_become_events() -> None:
    f = feed()
    d = "/buckets/bkt/pre/resource=notes/data"
    put = f.parse(message(1, d, new=entry("id=a")), "p")
    assert put == [FeedEvent("put", "resource=notes/data/id=a", f'"{ETAG}"', "p", True)]
    assert f.parse(message(1, d, old=entry("id=a"), new=entry("id=a")), "p")[0].created is False
    assert f.parse(message(1, d, old=entry("id=a")), "p")[0].kind == "delete"
    moved = f.parse(message(1, d, old=entry("id=a"), new=entry("id=b"), parent=d), "p")
    assert [(e.kind, e.key) for e in moved] == [
        ("delete", "resource=notes/data/id=a"), ("put", "resource=notes/data/id=b")]  # fmt: skip
    assert f.parse(message(1, d, new=entry("data", directory=True)), "p") == []
    assert f.parse(message(1, "/buckets/other/pre", new=entry("x")), "p") == []  # not ours


async def test_unreadable_output_is_skipped_and_counted(tmp_path: Path) -> None:
    good = json.dumps(message(5, "/buckets/bkt/pre/resource=n/data", new=entry("id=z")), indent=1)
    lines = [
        "{", ' "directory": broken', "}",  # not JSON
        json.dumps({"tsNs": "3", "unexpected": True}, indent=1),  # not a metadata message
        "{", ' "x": "' + "y" * (MAX_MESSAGE + 10) + '"', "}",  # too large
        good,
    ]
    out = tmp_path / "out.txt"
    out.write_text("\n".join(lines) + "\n")
    weed = tmp_path / "weed"
    weed.write_text(f"#!/bin/sh\ncat {out}\nexec sleep 30\n")
    weed.chmod(weed.stat().st_mode | stat.S_IEXEC)
    f = feed(f"seaweedfs://127.0.0.1:8888?weed={weed}")
    events = f.events("1.7")
    try:
        first = await asyncio.wait_for(events.__anext__(), 20)
    finally:
        await f.close()
    assert first.kind == "put" and first.key == "resource=n/data/id=z"
    assert first.position == "5.7"
    assert f.malformed == 3
