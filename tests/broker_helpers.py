"""Helpers shared by the broker tests: a change-collecting plugin and polling with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from s3db_core import Change, Database, hookimpl

DEADLINE = 10.0


class Collector:
    """A plugin that records every change its database's ``s3db_change`` hook receives."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    @hookimpl
    def s3db_change(self, change: Change) -> None:
        self.changes.append(change)

    def of(self, resource: str) -> list[Change]:
        return [c for c in self.changes if c.resource == resource]


async def eventually(check: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def open_db(store: str, broker: str, **config: Any) -> tuple[Database, Collector]:
    """A connected Database on ``store`` and ``broker`` with a ``notes`` resource and a Collector."""
    db = Database(store, broker=broker, broker_config=config or None)
    collector = Collector()
    await db.use_plugin(collector)
    await db.connect()
    await db.create_resource("notes", {"text": "string|required"})
    return db, collector


def texts(changes: list[Change]) -> list[str]:
    return [c.record["text"] for c in changes]
