"""Finding and fixing damage in a store: ``await db.repair()`` / ``s3db repair URL``.

What it looks for, in every resource the database knows (created in this process or recorded
in ``s3db.json``), among the keys it writes itself: a key of another shape beside them (another
program's, e.g. ``plugin=...`` or ``resource=R/historical/...``) is never read, changed or
removed:

- records missing from a partition listing (their partition reference is gone: written by an
  older version that was killed between the record and its reference): the reference is added;
- references whose record is gone or has moved to another partition value: removed, but only
  when older than ``grace`` seconds, so a write in flight (which writes references first) is
  never disturbed;
- damaged records (objects that cannot be read back): reported by key, left in place;
- temp files a killed writer left in a ``file://`` store: removed when older than ``grace``.

It reports what it found and did (``RepairReport``); ``dry_run=True`` only reports.
``progress`` (a function) is called as it goes with a ``RepairProgress``: the library prints
nothing, ``s3db repair`` renders it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import DamagedRecordError
from .resource import Resource
from .storage.base import ObjectNotFound

if TYPE_CHECKING:
    from .database import Database

DEFAULT_GRACE = 120.0
MAX_GRACE = 365 * 86400.0  # a year: longer than any write stays in flight
CONCURRENCY = 32


@dataclass
class ResourceRepair:
    records: int = 0
    damaged: list[str] = field(default_factory=list)
    references_added: list[str] = field(default_factory=list)
    references_removed: list[str] = field(default_factory=list)


@dataclass
class RepairReport:
    resources: dict[str, ResourceRepair] = field(default_factory=dict)
    temp_files_removed: int = 0
    dry_run: bool = False

    @property
    def clean(self) -> bool:
        """Nothing was wrong."""
        return not self.temp_files_removed and not any(
            r.damaged or r.references_added or r.references_removed for r in self.resources.values()
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "temp_files_removed": self.temp_files_removed,
            "resources": {
                name: {
                    "records": r.records,
                    "damaged": r.damaged,
                    "references_added": r.references_added,
                    "references_removed": r.references_removed,
                }
                for name, r in self.resources.items()
            },
        }


@dataclass
class RepairProgress:
    """Where a repair is, handed to ``repair(progress=...)`` after every object it reads and at
    each phase: the same object each time, updated in place (copy what you keep). Counts are
    totals since the start, over every resource so far. ``phase`` is ``records`` (reading every
    record), ``references`` (partition references), ``temp files``, then ``done``."""

    resource: str = ""
    phase: str = "records"
    keys: int = 0  # objects read or listed
    records: int = 0
    damaged: int = 0
    references_missing: int = 0  # added, unless dry_run
    references_stale: int = 0  # removed, unless dry_run
    temp_files_removed: int = 0
    dry_run: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class _Progress:
    """Keeps a ``RepairProgress`` up to date from each resource's ``ResourceRepair`` and calls
    the user's function with it (nothing at all without one)."""

    def __init__(self, callback: Callable[[RepairProgress], Any] | None, dry_run: bool) -> None:
        self.callback = callback
        self.state = RepairProgress(dry_run=dry_run)
        self.before = ResourceRepair()  # totals of the resources already done

    def __call__(self, out: ResourceRepair, keys: int = 0, phase: str | None = None) -> None:
        if self.callback is None:
            return
        state, before = self.state, self.before
        state.keys += keys
        if phase is not None:
            state.phase = phase
        state.records = before.records + out.records
        state.damaged = len(before.damaged) + len(out.damaged)
        state.references_missing = len(before.references_added) + len(out.references_added)
        state.references_stale = len(before.references_removed) + len(out.references_removed)
        self.callback(state)

    def resource(self, name: str, done: ResourceRepair | None = None) -> None:
        if done is not None:
            self.before.records += done.records
            self.before.damaged += done.damaged
            self.before.references_added += done.references_added
            self.before.references_removed += done.references_removed
        self.state.resource = name


def _known_resources(db: Database) -> list[Resource]:
    """Every resource ``connect`` loaded from ``s3db.json`` or this process defined; a recorded
    definition this version cannot read was skipped there and is left alone here."""
    return [db.resources[name] for name in db.resources]


def _is_our_reference(resource: Resource, key: str) -> bool:
    """Whether ``key`` has the exact shape of a partition reference this resource writes
    (``resource=R/partition=P/f1=v1/.../id=ID`` with P one of its partitions and its fields in
    order). Anything else under the prefix was written by someone else: never touched."""
    parts = resource.layout.reference_parts(key)
    fields = resource.partitions.get(parts[0])
    if fields is None or len(parts) != len(fields) + 2:
        return False
    if not parts[-1].startswith("id=") or len(parts[-1]) == len("id="):
        return False
    return all(part.startswith(f"{field}=") for part, field in zip(parts[1:-1], fields, strict=True))


def _is_record_key(record_key: str, key: str) -> bool:
    """``resource=R/data/id=ID`` exactly (another program's keys under ``data/`` are skipped)."""
    return key.startswith(record_key) and len(key) > len(record_key) and "/" not in key[len(record_key) :]


def _is_our_reference_object(metadata: dict[str, str], body: bytes) -> bool:
    """A reference this version writes holds no user metadata and the time it was written in
    ms (older versions: nothing); another program's object at such a key is left alone."""
    return not metadata and (body.isdigit() or body == b"")


async def repair(
    db: Database,
    *,
    grace: float = DEFAULT_GRACE,
    dry_run: bool = False,
    progress: Callable[[RepairProgress], Any] | None = None,
) -> RepairReport:
    report = RepairReport(dry_run=dry_run)
    tick = _Progress(progress, dry_run)
    for resource in _known_resources(db):
        tick.resource(resource.name)
        done = report.resources[resource.name] = await _repair_resource(
            resource, grace, dry_run, tick
        )
        tick.resource("", done)
    cleanup = getattr(db.storage, "remove_temp_files", None)
    empty = ResourceRepair()
    if cleanup is not None:
        tick(empty, phase="temp files")
        report.temp_files_removed = await cleanup(grace, dry_run=dry_run)
        tick.state.temp_files_removed = report.temp_files_removed
    tick(empty, phase="done")
    return report


async def _repair_resource(
    resource: Resource, grace: float, dry_run: bool, tick: _Progress | None = None
) -> ResourceRepair:
    out = ResourceRepair()
    tick = tick or _Progress(None, dry_run)
    tick(out, phase="records")
    storage = resource.storage
    sem = asyncio.Semaphore(CONCURRENCY)
    expected: set[str] = set()

    async def inspect(id: str) -> None:
        async with sem:
            try:
                found = await resource.get_versioned(id)
            except DamagedRecordError as error:
                out.damaged.append(error.key)
                tick(out, 1)
                return
        if found is not None:
            out.records += 1
            expected.update(resource.layout.partition_keys(found.record).values())
        tick(out, 1)

    record_key = resource.layout.record_prefix
    after: str | None = None
    while True:
        page = await storage.list(resource.layout.data_prefix, start_after=after, max_keys=1000)
        ids = [k[len(record_key) :] for k in page.keys if _is_record_key(record_key, k)]
        await asyncio.gather(*(inspect(i) for i in ids))
        if page.next_start_after is None:
            break
        after = page.next_start_after
    if not resource.partitions:
        return out
    existing: set[str] = set()
    prefix = resource.layout.partition_prefix
    after = None
    tick(out, phase="references")
    while True:
        page = await storage.list(prefix, start_after=after, max_keys=1000)
        existing.update(k for k in page.keys if _is_our_reference(resource, k))
        tick(out, len(page.keys))
        if page.next_start_after is None:
            break
        after = page.next_start_after
    for key in sorted(expected - existing):
        out.references_added.append(key)
        if not dry_run:
            await storage.put(key, resource.layout.reference_body(), {})
        tick(out)
    now_ms = time.time() * 1000

    async def maybe_remove(key: str) -> None:
        async with sem:
            try:
                ref = await storage.get(key)
            except ObjectNotFound:
                return
            if not _is_our_reference_object(ref.metadata, ref.body):
                return  # written by another program: not ours to judge
            written = int(ref.body) if ref.body.isdigit() else 0  # older versions wrote b""
            if now_ms - written < grace * 1000:
                return  # possibly a write in flight: its record may commit any moment
            id = key.rsplit("/id=", 1)[1]
            try:
                found = await resource.get_versioned(id)
            except DamagedRecordError:
                return
            if found is not None and key in resource.layout.partition_keys(found.record).values():
                return  # it became right meanwhile
            out.references_removed.append(key)
            if not dry_run:
                await storage.delete(key)

    async def checked(key: str) -> None:
        try:
            await maybe_remove(key)
        finally:
            tick(out, 1)

    await asyncio.gather(*(checked(k) for k in sorted(existing - expected)))
    out.references_removed.sort()
    return out
