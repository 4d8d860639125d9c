"""The record cache: ``Database(url, broker=..., cache={"max_bytes": ..., "lists": True,
"max_stale": ...})``, off by default.

What it keeps, per process:

* **records** by (resource, id): the JSON of the record (or a *tombstone* for one known not to
  exist), its system version, the ETag when known, and two ticks of a counter this cache bumps
  on every store into it: ``tick`` (last store of any kind) and ``changed`` (last change from
  the stream, the writer or the sweep). Least recently used out first once ``max_bytes`` is
  reached; a hit hands back a fresh copy (``orjson.loads`` of the stored JSON), so no caller
  ever holds the cached object.
* **id-sets** (``lists``): per resource, the sorted ids under its data prefix and under each
  partition prefix a listing asked for, kept by the stream so a hot ``list``/``query``/``count``
  costs no LIST. A set is built by buffering the changes that arrive from then on, listing the
  keys, then applying the buffered changes on top.

How it stays exact:

* Changes are applied in stream order (the change carries the record; a delete leaves a
  tombstone). Per resource the last position applied is kept: a change at or before it (a
  replay) is skipped; on a broker whose offsets are contiguous a jump, and on any broker a new
  epoch, flushes the resource (history no longer reaches back).
* The writing process applies its own change before the write returns; until that change comes
  back on the stream, older changes of that record arriving from the stream are skipped.
* A read that misses notes the counter, reads the store, and keeps what it read only if nothing
  was stored for that record meanwhile: no change, and no other store read (a get's fill or a
  sweep's re-read) that ended first, since overlapping reads end in any order
  (``fills_dropped`` counts the others). A late insert never replaces a kept read of the same
  record at a higher version.
* A flush (new epoch, gap, "lost") and an outage ("down") turn the records held into doubt
  markers rather than dropping them: a change arriving later still for a record this process
  has read (a writer's outage buffer drained after the recovery period) is not applied over it.
* It serves only while the broker's reader is connected with no gap (``watch_continuity`` on the
  networked brokers: ``down`` stops serving, ``up`` checks each resource's history from the last
  position applied, applies it, then serves again, flushing a resource whose history no longer
  reaches back; ``lost`` flushes).
* ``max_stale`` runs a sweep at that period: 1 LIST per 1,000 keys of each resource, comparing
  ETags with the records cached, reading only those that changed (or whose ETag is not known),
  so a write that never reached the stream is seen within ``max_stale`` plus one sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from .brokers.base import Position
from .change import Change
from .log import get_logger

if TYPE_CHECKING:
    from .database import Database
    from .resource import Resource

log = get_logger("s3db.cache")

ENTRY_OVERHEAD = 160  # bytes counted per cached record or tombstone beyond its JSON
ID_OVERHEAD = 64  # bytes counted per id held in an id-set
SWEEP_CONCURRENCY = 16
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_RECOVERY = 10.0


@dataclass(frozen=True, slots=True)
class CacheOptions:
    """``cache={...}`` of ``Database``: ``max_bytes`` (memory bound, default 64 MiB), ``lists``
    (keep id-sets so hot listings cost no request, default True), ``max_stale`` (seconds between
    sweeps that catch writes made outside the stream; None: no sweep), ``single_writer`` (this
    process is the only one writing the store: allows the local broker on a shared store
    without ``max_stale``), ``recovery`` (seconds after a broker outage during which records
    are trusted only as read from the store, while writers publish what they held)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    lists: bool = True
    max_stale: float | None = None
    single_writer: bool = False
    recovery: float = DEFAULT_RECOVERY

    @classmethod
    def parse(cls, value: Mapping[str, Any] | bool, store_url: str, broker: str) -> CacheOptions:
        if value is True:
            value = {}
        if not isinstance(value, Mapping):
            raise ValueError("cache must be a dict of options (or True for the defaults)")
        known = {"max_bytes", "lists", "max_stale", "single_writer", "recovery"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown cache option(s) {unknown}; known: {sorted(known)}")
        max_bytes = value.get("max_bytes", DEFAULT_MAX_BYTES)
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or not (
            4096 <= max_bytes <= 1 << 40
        ):
            raise ValueError("cache option 'max_bytes' must be an integer from 4096 to 2**40")
        lists = value.get("lists", True)
        single = value.get("single_writer", False)
        for name, flag in (("lists", lists), ("single_writer", single)):
            if not isinstance(flag, bool):
                raise ValueError(f"cache option {name!r} must be true or false")
        max_stale = value.get("max_stale")
        if max_stale is not None:
            if isinstance(max_stale, bool) or not isinstance(max_stale, int | float) or not (
                0.05 <= max_stale <= 86400
            ):
                raise ValueError("cache option 'max_stale' must be seconds from 0.05 to 86400")
            max_stale = float(max_stale)
        recovery = value.get("recovery", DEFAULT_RECOVERY)
        if isinstance(recovery, bool) or not isinstance(recovery, int | float) or not (
            0 <= recovery <= 3600
        ):
            raise ValueError("cache option 'recovery' must be seconds from 0 to 3600")
        local = broker.split("://", 1)[0].split("?", 1)[0] in ("local", "")
        if local and not store_url.startswith("memory://") and max_stale is None and not single:
            raise ValueError(
                "cache with the local broker on a store other processes may write: set "
                "cache={'max_stale': SECONDS} (a sweep at that period catches their writes), "
                "use a shared broker (redis://, nats://), or say cache={'single_writer': True} "
                "if this process is the only writer"
            )
        return cls(max_bytes, lists, max_stale, single, float(recovery))


def _pack(record: Any) -> bytes:
    """The record's JSON as the cache keeps it: a copy of what ``orjson.dumps`` returns, whose
    buffer keeps the 4 KiB it was written into (a record of 230 bytes held 4.3 KB)."""
    return bytes(memoryview(orjson.dumps(record)))


class _Entry:
    __slots__ = ("changed", "data", "doubt", "etag", "filled", "pending", "read_ms", "size", "tick",
                 "version")  # fmt: skip

    def __init__(
        self, data: bytes | None, version: int, etag: str | None, tick: int, changed: int, size: int
    ) -> None:
        self.data = data  # the record's JSON; None: a tombstone (known not to exist)
        self.version = version
        self.etag = etag
        self.tick = tick
        self.changed = changed
        self.size = size  # the stored size reported to byte budgets of listings
        self.pending: tuple[str, int, int] | None = None  # own write not yet back on the stream
        self.filled = False  # the state came from a store read, not from a change
        self.doubt = False  # state unknown (the stream may be behind the store): a miss
        self.read_ms = 0  # filled: wall clock (ms) when the store read began

    @property
    def cost(self) -> int:
        return ENTRY_OVERHEAD + (len(self.data) if self.data is not None else 0)


class _Stream:
    """Per resource: the last position applied and the id-sets."""

    __slots__ = ("building", "epoch", "ids", "offset")

    def __init__(self) -> None:
        self.epoch: str | None = None
        self.offset = 0
        self.ids: dict[str, list[str]] = {}  # prefix -> sorted ids
        self.building: dict[str, list[Change]] = {}  # prefix -> changes met while listing


def _prefix_of(key: str) -> str:
    return key.rsplit("id=", 1)[0]


class RecordCache:
    """One per Database with ``cache=`` set (``db.cache``)."""

    def __init__(self, db: Database, options: CacheOptions) -> None:
        self.db = db
        self.options = options
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._streams: dict[str, _Stream] = {}
        self._tick = 0
        self._floor = 0  # a fill begun before this tick of a record without an entry is dropped
        self.bytes = 0
        self.id_bytes = 0
        self._connected = False
        self._running = False
        self._checks = 0  # bumped by every "down": a history check it overtook does not resume
        self._tasks: set[asyncio.Task[None]] = set()
        self._first_positions: dict[str, Position] = {}
        self._recovering_until = 0.0
        self._sweeper: asyncio.Task[None] | None = None
        self._contiguous = bool(getattr(db.broker, "contiguous_offsets", False))
        watch = getattr(db.broker, "watch_continuity", None)
        self._watched = watch is not None
        if watch is not None:
            watch(self._on_continuity)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self.flush(count=False)
        self._running = True
        self._connected = bool(getattr(self.db.broker, "reading", True)) if self._watched else True
        if self.options.max_stale is not None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def stop(self) -> None:
        self._running = False
        self._connected = False
        tasks = {t for t in (self._sweeper, *self._tasks) if t is not None}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self._sweeper = None
        self.flush(count=False)

    @property
    def serving(self) -> bool:
        """True while reads may be answered from the cache."""
        return self._running and self._connected

    # -- stats --------------------------------------------------------------------------------
    @property
    def _stats(self) -> Any:
        return self.db.stats

    def _account(self) -> None:
        self._stats.cache_bytes = self.bytes + self.id_bytes

    # -- continuity -----------------------------------------------------------------------------
    def _on_continuity(self, state: str) -> None:
        if state == "down":
            # Writers hold their changes through the outage and publish them late, so the store
            # moves ahead of the stream: what this process held, or reads meanwhile, cannot be
            # put in stream order with what arrives after. Start over, and trust only store
            # reads for ``recovery`` seconds after the reader is back.
            self._checks += 1
            self._connected = False
            self._recovering_until = float("inf")
            self._forget_records()
            log.info("cache_paused", reason="stream reader disconnected")
        elif state == "lost":
            self.flush()
        elif state == "up" and self._running:
            self._checks += 1
            task = asyncio.get_running_loop().create_task(self._catch_up(self._checks))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _catch_up(self, check: int) -> None:
        """After a reconnect: apply each resource's history since the last position applied, or
        flush the resource when it no longer reaches back; then serve again."""
        broker = self.db.broker
        for name, stream in list(self._streams.items()):
            if stream.epoch is None:
                continue
            since = Position(stream.offset, stream.epoch)
            try:
                changes = await broker.history(name, since)
            except Exception:
                changes = None
            if check != self._checks:
                return
            if changes is None:
                log.warning("cache_flushed", resource=name, reason="history does not reach back")
                self.flush(name)
                stream.epoch = None
                continue
            for change in changes:
                self.on_change(change)
        if check == self._checks:
            self._connected = True
            self._recovering_until = time.monotonic() + self.options.recovery
            log.info("cache_resumed")

    # -- flush ------------------------------------------------------------------------------------
    def flush(self, resource: str | None = None, *, count: bool = True) -> None:
        """Forget every record (of ``resource``) and the id-sets; fills in flight are dropped."""
        self._tick += 1
        self._floor = self._tick
        if resource is None:
            if count and self._running:
                self._doubt_held(None)
            else:  # start/stop: nothing is kept
                self._entries.clear()
                self.bytes = 0
            self._streams.clear()
            self._first_positions.clear()
            self.id_bytes = 0
        else:
            self._doubt_held(resource)
            stream = self._streams.get(resource)
            if stream is not None:
                self._drop_ids(stream)
        if count:
            self._stats.cache_flushes += 1
        self._account()

    def _forget_records(self) -> None:
        """Every record and id-set goes; stream positions stay (history is checked from them)."""
        self._tick += 1
        self._floor = self._tick
        self._doubt_held(None)
        for stream in self._streams.values():
            self._drop_ids(stream)
        self._stats.cache_flushes += 1
        self._account()

    def _doubt_held(self, resource: str | None) -> None:
        """Every record held (of ``resource``) becomes a doubt marker instead of going: a
        change that arrives late for it (a writer's outage buffer drained after the recovery
        period) is not applied over what this process already read, the next read asks the
        store and keeps what it reads only when no change raced it."""
        tick = self._tick
        for key, entry in self._entries.items():
            if (resource is not None and key[0] != resource) or entry.doubt:
                continue
            marker = _Entry(None, 0, None, tick, tick, 0)
            marker.filled = marker.doubt = True
            marker.pending = entry.pending
            self.bytes += marker.cost - entry.cost
            self._entries[key] = marker

    @property
    def recovering(self) -> bool:
        """After an outage: records are trusted only as read from the store."""
        return time.monotonic() < self._recovering_until

    def _drop_ids(self, stream: _Stream) -> None:
        for ids in stream.ids.values():
            self.id_bytes -= sum(len(i) + ID_OVERHEAD for i in ids)
        stream.ids.clear()
        stream.building.clear()

    # -- records ----------------------------------------------------------------------------------
    def _store(self, key: tuple[str, str], entry: _Entry) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.cost
            if entry.pending is None:
                entry.pending = old.pending
        self._entries[key] = entry
        self.bytes += entry.cost
        limit = self.options.max_bytes
        while self.bytes + self.id_bytes > limit and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.cost
            self._floor = max(self._floor, evicted.changed)
        self._account()

    def lookup(self, resource: str, id: str) -> tuple[bool, dict[str, Any] | None]:
        """(hit, record or None when known not to exist). A miss is (False, None)."""
        hit, record, _, _ = self.lookup_versioned(resource, id)
        return hit, record

    def lookup_versioned(
        self, resource: str, id: str
    ) -> tuple[bool, dict[str, Any] | None, int, str | None]:
        """``lookup`` with the record's system version and ETag (None when not known)."""
        if not self.serving:
            return False, None, 0, None
        entry = self._entries.get((resource, id))
        stats = self._stats
        if entry is None:
            stream = self._streams.get(resource)
            defined = self.db.resources.get(resource)
            ids = stream.ids.get(defined.layout.data_prefix) if stream and defined else None
            if ids is not None:
                i = bisect_left(ids, id)
                if i == len(ids) or ids[i] != id:  # the id-set says it does not exist
                    stats.cache_hits += 1
                    return True, None, 0, None
            stats.cache_misses += 1
            return False, None, 0, None
        if entry.doubt:
            stats.cache_misses += 1
            return False, None, 0, None
        self._entries.move_to_end((resource, id))
        stats.cache_hits += 1
        record = None if entry.data is None else orjson.loads(entry.data)
        return True, record, entry.version, entry.etag

    def lookup_entry(self, resource: str, id: str) -> _Entry | None:
        """The entry behind a hit (its stored size), or None."""
        return self._entries.get((resource, id)) if self.serving else None

    async def settled(self, resource: str) -> bool:
        """True when this cache has applied every change the broker holds for ``resource``, so
        what a store read found cannot be older than a change still on its way here (a fill
        ahead of the stream would be overwritten by an older change). The local broker delivers
        before ``publish`` returns: always settled. Otherwise one bounded position request;
        a resource this cache has heard nothing of is settled once its position is unchanged
        since the first time it was asked."""
        if not self._watched:
            return True
        try:
            async with asyncio.timeout(1.0):
                position = await self.db.broker.position(resource)
        except Exception:
            return False
        stream = self._streams.get(resource)
        if stream is None or stream.epoch is None:
            first = self._first_positions.setdefault(resource, position)
            return first == position and self.serving
        return (
            position.epoch == stream.epoch and position.offset <= stream.offset and self.serving
        )

    def begin(self) -> tuple[int, int]:
        """Taken before a store read whose result may be kept with ``fill``: the counter, and
        the wall clock in ms (changes stamped before it are not newer than what is read)."""
        return self._tick, int(time.time() * 1000)

    def fill(
        self,
        resource: str,
        id: str,
        record: dict[str, Any] | None,
        etag: str | None,
        version: int,
        begun: tuple[int, int],
        size: int | None = None,
    ) -> None:
        """Keep what a read found, unless a change to that record arrived while it read."""
        if not self.serving:
            return
        key = (resource, id)
        entry = self._entries.get(key)
        if self._stored_since(entry, begun):
            # A change may be older than what was read (a writer publishing late), and another
            # store read that ended first may be newer (overlapping reads end in any order):
            # neither is kept, the next read asks the store.
            self._stats.cache_fills_dropped += 1
            self._doubt(resource, id)
            return
        self._tick += 1
        data = None if record is None else _pack(record)
        changed = entry.changed if entry is not None else 0
        stored = size if size is not None else (len(data) if data is not None else 0)
        new = _Entry(data, version, etag, self._tick, changed, stored)
        new.filled = True
        new.read_ms = begun[1]
        self._store(key, new)
        self._fill_ids(resource, id, record)

    def _stored_since(self, entry: _Entry | None, begun: tuple[int, int]) -> bool:
        """True when anything was stored for the record (a change, or another store read's
        fill) since a store read began at ``begun``: that read may be older than the entry."""
        if entry is None:
            return self._floor > begun[0]
        return max(entry.tick, entry.changed) > begun[0]

    def _fill_ids(self, resource: str, id: str, record: dict[str, Any] | None) -> None:
        """What a store read found joins (or leaves) the id-sets, which may lag behind it."""
        stream = self._streams.get(resource)
        defined = self.db.resources.get(resource)
        if stream is None or defined is None or not stream.ids:
            return
        change = Change(resource, "delete" if record is None else "insert", record or {"id": id},
                        None, 0)  # fmt: skip
        for prefix, ids in stream.ids.items():
            self._apply_to(change, prefix, ids)

    def _apply_record(self, change: Change, own: bool) -> bool:
        """Apply one change to its record's entry; True when the entry was ahead of the stream
        (its state came from a store read), so the change may be older than what was read."""
        record_id = change.record.get("id")
        if not isinstance(record_id, str):
            return False
        key = (change.resource, record_id)
        entry = self._entries.get(key)
        mark = (change.event, change.version, change.timestamp)
        if entry is not None and entry.pending is not None and not own:
            if entry.pending == mark:
                entry.pending = None  # our own write came back: already applied
            return False  # else older than our own write (stream-before it): skip
        if not own and entry is None and self.recovering:
            self._doubt(change.resource, record_id)  # maybe older than the store: ask it
            return True
        if not own and entry is not None and entry.doubt:
            self._tick += 1
            entry.changed = self._tick  # a fill racing this change is dropped
            return True
        if not own and entry is not None and entry.filled and change.timestamp <= entry.read_ms:
            # Committed before the store read began (a writer publishing late): what was read
            # is at least as new, so never step back to it.
            return True
        elif (
            not own
            and change.event == "update"
            and entry is not None
            and entry.version >= change.version
        ):
            # An update older than what is cached (publishers racing), or than a tombstone: the
            # delete of version v comes after every update up to v (a late update must not bring
            # the record back; only an insert starts its next life).
            return False
        elif (
            not own
            and change.event == "insert"
            and entry is not None
            and entry.filled
            and entry.data is not None
            and entry.version > change.version
        ):
            # A late insert of the incarnation a store read already saw updated (its stamp is
            # taken after the write, so it may be later than the read's start): a newer
            # incarnation would come after its delete, which leaves a tombstone first.
            return True
        self._tick += 1
        data = None if change.event == "delete" else _pack(change.record)
        new = _Entry(data, change.version, None, self._tick, self._tick, len(data or b""))
        if own:
            new.pending = mark
        if entry is not None:
            self.bytes -= entry.cost
            del self._entries[key]
        self._store(key, new)
        return False

    def _doubt(self, resource: str, id: str) -> None:
        """The record's state is unknown here: it is read from the store until a fill that no
        change raced settles it (changes meanwhile are not applied: they may be older)."""
        self._tick += 1
        marker = _Entry(None, 0, None, self._tick, self._tick, 0)
        marker.filled = marker.doubt = True
        self._store((resource, id), marker)

    def unsettled(self, resource: str, id: str) -> None:
        """A store read that could not be kept (the stream had not caught up): changes that
        arrive for the record may be older than it, so none is applied until a read is kept."""
        if self.serving:
            self._stats.cache_fills_dropped += 1
            self._doubt(resource, id)

    def read_outside(self, resource: str, id: str) -> None:
        """A store read while the cache is not serving: what it found may be newer than the
        entry, so the entry goes (a later hit must not be older than this read)."""
        if not self.serving and self._running:
            self._doubt(resource, id)

    # -- changes ----------------------------------------------------------------------------------
    def apply_own(self, change: Change) -> None:
        """The writing process's own change, before the write returns (read your writes)."""
        if not self._running:
            return  # stopped: nothing is kept (start begins empty)
        self._apply_record(change, own=True)
        self._apply_ids(change, False)

    def on_change(self, change: Change) -> None:
        """A change from the stream (every process's, in stream order per resource)."""
        if not self._running:
            # Stopped (the database disconnecting): the broker's reader may still hand over its
            # last batch, which must not refill what stop() emptied.
            return
        stream = self._streams.get(change.resource)
        if stream is None:
            stream = self._streams[change.resource] = _Stream()
        if change.offset is not None and change.epoch is not None:
            if stream.epoch is not None:
                if change.epoch != stream.epoch:
                    log.info("cache_flushed", resource=change.resource, reason="new epoch")
                    self.flush(change.resource)
                elif change.offset <= stream.offset:
                    return  # already applied (a replay after a reconnect)
                elif self._contiguous and change.offset != stream.offset + 1:
                    log.info("cache_flushed", resource=change.resource, reason="gap")
                    self.flush(change.resource)
            stream.epoch, stream.offset = change.epoch, change.offset
        ahead = self._apply_record(change, own=False)
        self._apply_ids(change, ahead)

    # -- id-sets ----------------------------------------------------------------------------------
    def _prefixes(self, resource: Resource, record: dict[str, Any] | None) -> set[str]:
        if record is None:
            return set()
        try:
            return {_prefix_of(k) for k in resource.layout.partition_keys(record).values()}
        except Exception:
            return set()

    def _apply_ids(self, change: Change, ahead: bool) -> None:
        stream = self._streams.get(change.resource)
        if stream is None or not (stream.ids or stream.building):
            return
        for pending in stream.building.values():
            pending.append(change)
        for prefix, ids in stream.ids.items():
            self._apply_to(change, prefix, ids, ahead)
        if self.id_bytes > self.options.max_bytes // 2:
            log.info("cache_id_sets_dropped", resource=change.resource, reason="max_bytes")
            self._drop_ids(stream)
            self._account()

    def _apply_to(self, change: Change, prefix: str, ids: list[str], ahead: bool = False) -> None:
        """Membership of one id-set after ``change``. When the record's entry was ahead of the
        stream a removal is not made (the change may be older): listing it reads its entry,
        which answers (or reads the store)."""
        resource = self.db.resources.get(change.resource)
        record_id = change.record.get("id")
        if resource is None or not isinstance(record_id, str):
            return
        if prefix == resource.layout.data_prefix:
            present = change.event != "delete"
        else:
            present = change.event != "delete" and prefix in self._prefixes(resource, change.record)
        i = bisect_left(ids, record_id)
        there = i < len(ids) and ids[i] == record_id
        if present and not there:
            ids.insert(i, record_id)
            self.id_bytes += len(record_id) + ID_OVERHEAD
        elif there and not present and not ahead:
            del ids[i]
            self.id_bytes -= len(record_id) + ID_OVERHEAD

    async def ids(self, resource: Resource, prefix: str) -> list[str] | None:
        """The sorted id-set of ``prefix`` (built now if needed), or None (list the store)."""
        if not (self.options.lists and self.serving) or self.recovering:
            return None
        stream = self._streams.get(resource.name)
        if stream is None:
            stream = self._streams[resource.name] = _Stream()
        ids = stream.ids.get(prefix)
        if ids is not None:
            return ids
        if prefix in stream.building:
            return None  # another listing is building it
        met: list[Change] = []
        stream.building[prefix] = met
        floor = self._floor
        listed: list[str] = []
        try:
            after: str | None = None
            while True:
                page = await resource.storage.list(prefix, start_after=after, max_keys=1000)
                listed.extend(k.rsplit("/id=", 1)[1] for k in page.keys)
                if page.next_start_after is None:
                    break
                after = page.next_start_after
        finally:
            if stream.building.get(prefix) is met:
                del stream.building[prefix]
        if not self.serving or self._floor != floor or self._streams.get(resource.name) is not stream:
            return None  # flushed meanwhile: this listing cannot be trusted
        listed.sort()
        if not await self.settled(resource.name):
            return None  # the listing may be ahead of the stream: answer from the store
        for change in met:
            self._apply_to(change, prefix, listed)
        cost = sum(len(i) + ID_OVERHEAD for i in listed)
        if self.id_bytes + cost > self.options.max_bytes // 2:
            return listed  # too big to keep: answer this listing only
        stream.ids[prefix] = listed
        self.id_bytes += cost
        self._account()
        return listed

    def listed(
        self,
        resource: Resource,
        prefix: str,
        after: str | None,
        ids: list[str],
        complete: bool,
        etags: list[str] | None = None,
    ) -> None:
        """A store listing (no id-set) of ``ids`` after ``after``: a record it contradicts (held
        live but not listed in the range it covers, held as gone but listed, or listed with
        another ETag than the one held: the validated list) may be older than the store, so it
        is read from the store next time. A walk over the entries held: only listings that go
        to the store pay it."""
        if not self.serving or not self._entries:
            return
        name = resource.name
        seen = set(ids)
        listed_etags = (
            dict(zip(ids, etags, strict=True))
            if etags is not None and prefix == resource.layout.data_prefix
            else {}
        )
        last = ids[-1] if ids and not complete else None
        data = prefix == resource.layout.data_prefix
        doubtful = []
        for (res, id), entry in self._entries.items():
            if res != name or entry.doubt or (after is not None and id <= after):
                continue
            if last is not None and id > last:
                continue
            if entry.data is None:
                if id in seen:
                    doubtful.append(id)
            elif entry.etag is not None and id in listed_etags and listed_etags[id] != entry.etag:
                doubtful.append(id)  # changed in the store since it was read
            elif id not in seen and (data or prefix in self._prefixes(resource, orjson.loads(entry.data))):
                doubtful.append(id)
        for id in doubtful:
            self._doubt(name, id)

    @staticmethod
    def page(ids: list[str], start_after: str | None, size: int) -> tuple[list[str], bool]:
        i = bisect_right(ids, start_after) if start_after is not None else 0
        return ids[i : i + size], i + size < len(ids)

    # -- sweep (max_stale) --------------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        period = self.options.max_stale or 30.0
        while self._running:
            await asyncio.sleep(period)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cache_sweep_failed", error=repr(exc))

    async def sweep(self) -> int:
        """Compare every resource's listing (with ETags) to the cache; re-read what changed.
        Returns how many records were re-read or found gone."""
        fixed = 0
        for name, resource in list(self.db.resources.items()):
            fixed += await self._sweep_one(name, resource)
        return fixed

    async def _sweep_one(self, name: str, resource: Resource) -> int:
        begun, begun_ms = self.begin()
        listed: dict[str, str | None] = {}
        after: str | None = None
        while True:
            page = await resource.storage.list(resource.layout.data_prefix, start_after=after)
            etags = page.etags or [None] * len(page.keys)  # type: ignore[list-item]
            for key, etag in zip(page.keys, etags, strict=True):
                listed[key.rsplit("/id=", 1)[1]] = etag
            if page.next_start_after is None:
                break
            after = page.next_start_after
        if not self.serving or not await self.settled(name):
            return 0  # changes still on their way here: the next sweep looks again
        stale: list[str] = []
        gone: list[str] = []
        for (res, id), entry in list(self._entries.items()):
            if res != name or entry.tick > begun:
                continue
            if id not in listed:
                if entry.data is not None:
                    gone.append(id)
            elif entry.data is None or entry.etag is None or entry.etag != listed[id]:
                stale.append(id)
        stream = self._streams.get(name)
        if stream is not None and stream.ids:
            ids = stream.ids.get(resource.layout.data_prefix)
            drift = ids is not None and (len(ids) != len(listed) or any(i not in listed for i in ids))
            if drift or stale or gone:  # partitions may have moved too: rebuild on next listing
                self._drop_ids(stream)
                self._account()
        for id in gone:
            found = self._entries.get((name, id))
            if found is not None and found.tick <= begun:
                self._tick += 1
                tomb = _Entry(None, found.version, None, self._tick, self._tick, 0)
                tomb.filled = True
                # A store read like any other: a change stamped before the listing began (a
                # writer's outage buffer drained late: the delete, then an older incarnation's
                # insert) is older than this tombstone and must not bring that record back.
                tomb.read_ms = begun_ms
                self._store((name, id), tomb)
        sem = asyncio.Semaphore(SWEEP_CONCURRENCY)

        async def reread(id: str) -> None:
            async with sem:
                start = self.begin()
                with contextlib.suppress(Exception):
                    found = await resource._read(id)
                    if found is None:
                        self._force(name, id, None, None, 0, start)
                    else:
                        versioned, obj = found
                        self._force(name, id, versioned.record, obj.etag, versioned.version, start)

        if stale:
            await asyncio.gather(*(reread(i) for i in stale))  # kept as filled entries
        if stale or gone:
            log.info("cache_swept", resource=name, reread=len(stale), gone=len(gone))
        return len(stale) + len(gone)

    def _force(
        self, resource: str, id: str, record: dict[str, Any] | None, etag: str | None,
        version: int, begun: tuple[int, int],
    ) -> None:
        """A sweep's re-read replaces the entry (as a change would), unless a change arrived."""
        entry = self._entries.get((resource, id))
        if not self.serving:
            return
        if self._stored_since(entry, begun):
            # A get's fill (or a change) landed while this re-read was in flight: what it holds
            # may be newer than this read (a hit may already have answered it), never step back.
            if entry is not None and entry.changed <= begun[0]:
                self._doubt(resource, id)
            return
        self._tick += 1
        data = None if record is None else _pack(record)
        new = _Entry(data, version, etag, self._tick, self._tick, len(data or b""))
        new.filled = True
        new.read_ms = begun[1]
        self._store((resource, id), new)
