"""A resource: one collection of records, its keys in the store, and every operation on it.

Layout: ``<prefix>/resource=<name>/data/id=<id>`` holds the record; a partition keeps empty
reference objects at ``<prefix>/resource=<name>/partition=<p>/<field>=<value>/id=<id>`` so that a
filter pinning every field of the partition lists only that prefix.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import random
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from s3db_core.log import get_logger

from .change import Change
from .encoding import BEHAVIORS, METADATA_LIMIT, decode_record, encode_record, metadata_size
from .errors import ConflictError, DamagedRecordError, NotFoundError, StorageError, ValidationError
from .ids import new_id, validate_id
from .layout import KeyLayout
from .layout import decode_cursor as _decode_cursor
from .layout import encode_cursor as _encode_cursor
from .layout import partition_value as _partition_value
from .limits import check_depth, check_size, merge_patch
from .plugins import await_me_maybe
from .query import compile_filter, equality_terms
from .schema import Schema
from .storage.base import ObjectNotFound, PreconditionFailed, StorageClient, s3_key_problem

if TYPE_CHECKING:
    from .cache import RecordCache
    from .database import Database

log = get_logger("s3db.core")

SYSTEM_FIELDS = ("id", "createdAt", "updatedAt")
MAX_LIST_LIMIT = 1000
GET_CONCURRENCY = 64
UPDATE_ATTEMPTS = 100
BYTES_FIRST_CHUNK = 8  # records read at once by a byte-budgeted listing before sizes are known
DESC_LIST_PAGE = 10_000  # keys per LIST of a desc listing; S3 servers answer at most 1,000 (SeaweedFS refuses more than 10,000)
VERSION_KEY = "sr"  # metadata key of the record's system version


class Versioned(tuple[dict[str, Any], str]):
    """A stored record as ``get_versioned`` returns it: the pair ``(record, etag)`` (unpack it
    like a tuple) plus ``version``, the record's system version (1 on insert, +1 per update).
    Pass it back as ``update(..., current=)`` / ``delete(..., current=)``."""

    version: int

    def __new__(cls, record: dict[str, Any], etag: str, version: int) -> Versioned:
        self = super().__new__(cls, (record, etag))
        self.version = version
        return self

    def __getnewargs__(self) -> tuple[dict[str, Any], str, int]:
        return self[0], self[1], self.version  # copy/pickle keep the version

    @property
    def record(self) -> dict[str, Any]:
        return self[0]

    @property
    def etag(self) -> str:
        return self[1]


def _write_token(body: bytes) -> bytes:
    """The random revision line every stored record's body starts with: it tells one write
    from every other, so a writer can recognise its own write after a lost reply."""
    return body[: body.find(b"\n")]


def _stored_version(metadata: dict[str, str]) -> int:
    """The system version kept in a stored object's metadata (records written before versions
    existed count as version 1)."""
    text = metadata.get(VERSION_KEY)
    if text is None:
        return 1
    try:
        return max(1, int(text))
    except ValueError:
        return 1


_held: ContextVar[tuple[tuple[int, str], ...]] = ContextVar("s3db_held_records", default=())


class _Writers:
    """The writers of one record in this process: how many hold or wait for it, and the lock
    they queue on, made only when a second one arrives (a lone writer, the common case, creates
    and awaits nothing)."""

    __slots__ = ("users", "lock")

    def __init__(self) -> None:
        self.users = 1
        self.lock: asyncio.Lock | None = None


class _RecordLocks:
    """One lock per record id while someone writes it, so that writes of one record in
    this process run one at a time: no wasted conditional writes between them, and their
    changes are announced in commit order. Re-entrant along a call chain (a change listener
    that updates the record it was told about does not wait for itself); other processes are
    still kept apart by the conditional writes alone.

    While writers of a record queue here, the lock also remembers the version the last of them
    committed: a writer holding an older one (a caller's stale ``current``) is told at once,
    without a conditional write that would fail."""

    def __init__(self) -> None:
        self._locks: dict[str, _Writers] = {}
        self._committed: dict[str, int] = {}

    def committed(self, record_id: str) -> int:
        """The version a writer of this process last committed while others waited (0: none)."""
        return self._committed.get(record_id, 0)

    def note(self, record_id: str, version: int) -> None:
        if record_id in self._locks:
            self._committed[record_id] = version

    def forget(self, record_id: str) -> None:
        self._committed.pop(record_id, None)


class _Hold:
    """``async with _Hold(locks, id):`` -- the record's writers one at a time (re-entrant). A
    plain class rather than a generator-based context manager, because every update and delete
    takes it (~5 us saved per write).

    The first writer of a record takes it by registering alone. A second one creates the
    record's ``asyncio.Lock``, acquires it on the first one's behalf (a free lock is acquired
    without yielding) and then queues on it; from then on every holder releases that lock."""

    __slots__ = ("locks", "record_id", "writers", "token")

    def __init__(self, locks: _RecordLocks, record_id: str) -> None:
        self.locks = locks
        self.record_id = record_id
        self.writers: _Writers | None = None  # None: re-entered, nothing to release
        self.token: Token[tuple[tuple[int, str], ...]] | None = None

    async def __aenter__(self) -> None:
        key = (id(self.locks), self.record_id)
        held = _held.get()
        if held and key in held:
            return
        table = self.locks._locks
        writers = table.get(self.record_id)
        if writers is None:
            writers = table[self.record_id] = _Writers()
        else:
            writers.users += 1
            lock = writers.lock
            if lock is None:
                lock = writers.lock = asyncio.Lock()
                await lock.acquire()  # free: taken at once, for the writer already inside
            try:
                await lock.acquire()
            except BaseException:
                self._leave(writers)
                raise
        self.writers = writers
        self.token = _held.set((*held, key))

    async def __aexit__(self, *exc: object) -> None:
        writers = self.writers
        if writers is None:
            return
        assert self.token is not None
        _held.reset(self.token)
        if writers.lock is not None:
            writers.lock.release()
        self._leave(writers)

    def _leave(self, writers: _Writers) -> None:
        writers.users -= 1
        if not writers.users:
            locks, record_id = self.locks, self.record_id
            del locks._locks[record_id]
            locks._committed.pop(record_id, None)


@dataclass(slots=True)
class Stats:
    """Counters a Database keeps (``db.stats``) for metrics: ``damaged_records`` is how many
    times a listing skipped a record it could not read."""

    damaged_records: int = 0
    # The record cache (``Database(cache=...)``): reads answered from it, reads that went to
    # the store, fills dropped because a change raced them, flushes, and bytes held.
    cache_hits: int = 0
    cache_misses: int = 0
    cache_fills_dropped: int = 0
    cache_flushes: int = 0
    cache_bytes: int = 0
    cache_on: bool = False  # the cache counters are reported only when the cache is on

    def snapshot(self) -> dict[str, int]:
        if not self.cache_on:
            return {"damaged_records": self.damaged_records}
        return {
            "damaged_records": self.damaged_records,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "cache_fills_dropped": self.cache_fills_dropped,
            "cache_flushes": self.cache_flushes,
            "cache_bytes": self.cache_bytes,
        }


@dataclass(slots=True)
class Page:
    """One page of a listing; pass ``cursor`` back to continue (None: nothing more).

    ``versions`` maps the id of each record in ``items`` to its system version (1 on insert,
    +1 per update), beside the records so that they stay exactly what was stored."""

    items: list[dict[str, Any]]
    cursor: str | None
    versions: dict[str, int] = field(default_factory=dict)

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _all(operations: list[Any]) -> None:
    """Await store requests concurrently (a lone one directly: no task to schedule)."""
    if len(operations) == 1:
        await operations[0]
    else:
        await asyncio.gather(*operations)


def _both(first: Callable[[Any], bool], second: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda record: first(record) and second(record)


def _stored_size(obj: Any) -> int:
    return len(obj.body) + sum(len(k) + len(v) for k, v in obj.metadata.items())


def page_cursor(last_id: str, order: str = "asc") -> str:
    """The cursor of a page that ends with ``last_id`` (for a caller that cuts a page short)."""
    return _encode_cursor(last_id, order)


class Resource:
    """Records of one kind. Created by ``Database.create_resource``; reach it as ``db.resources.x``."""

    def __init__(
        self,
        db: Database,
        name: str,
        attributes: dict[str, Any],
        *,
        timestamps: bool = False,
        partitions: dict[str, Any] | None = None,
        behavior: str = "body-overflow",
    ) -> None:
        if behavior not in BEHAVIORS:
            raise ValueError(f"resource {name!r}: behavior must be one of {', '.join(BEHAVIORS)}")
        self.db = db
        self.name = name
        self.attributes = attributes
        self.schema = Schema(attributes, timestamps=timestamps)
        self.timestamps = timestamps
        self.behavior = behavior
        self.partitions: dict[str, list[str]] = {}
        for pname, pdef in (partitions or {}).items():
            fields = list((pdef or {}).get("fields", {}))
            missing = [f for f in fields if f not in self.schema.fields]
            if not fields or missing:
                raise ValueError(
                    f"resource {name!r}: partition {pname!r} needs fields that are attributes"
                    + (f" (unknown: {', '.join(missing)})" if missing else "")
                )
            self.partitions[pname] = sorted(fields)
        self._partition_defs = partitions or {}
        # Where its records and partition references live (layout.py; repair reads it too).
        self.layout = KeyLayout(name, self.partitions)
        self._base = self.layout.base  # the storage client adds the connection's prefix
        self._data_prefix = self.layout.data_prefix
        self._locks = _RecordLocks()

    # -- plumbing -------------------------------------------------------------------------
    @property
    def storage(self) -> StorageClient:
        return self.db.storage

    def definition(self) -> dict[str, Any]:
        return {
            "attributes": self.schema.to_dict(),
            "timestamps": self.timestamps,
            "partitions": self._partition_defs,
            "behavior": self.behavior,
        }

    def _key(self, id: str) -> str:
        return self.layout.record_key(id)

    def _partition_keys(self, record: dict[str, Any]) -> dict[str, str]:
        return self.layout.partition_keys(record)

    def _to_stored(self, record: dict[str, Any], version: int = 1) -> tuple[dict[str, str], bytes]:
        return self._encode({k: v for k, v in record.items() if k != "id"}, version)

    def _encode(self, fields: dict[str, Any], version: int) -> tuple[dict[str, str], bytes]:
        """The stored form of a record's ``fields`` (its id left out), size-checked."""
        metadata, body = encode_record(fields, self.behavior, {VERSION_KEY: str(version)})
        limit = self.db.limits.max_record_size
        if len(body) + 2 * METADATA_LIMIT > limit:  # metadata stays within its 2 KB budget
            check_size(metadata_size(metadata) + len(body), limit)
        return metadata, body

    _ref_body = staticmethod(KeyLayout.reference_body)

    def _check_keys(self, record: dict[str, Any], keys: list[str]) -> None:
        """Refuse, before any request, a write whose keys the store could not hold."""
        problem_of = getattr(self.storage, "key_problem", None)
        errors = []
        for key in keys:
            problem = problem_of(key) if problem_of else s3_key_problem(key)
            if problem is None:
                continue
            if key.startswith(self._data_prefix):
                errors.append({"field": "id", "rule": "key-length",
                               "message": f"id {record['id'][:40]!r}... cannot be stored: {problem}"})
            else:
                pname = key[len(self._base) + len("partition="):].split("/", 1)[0]
                fields = ", ".join(self.partitions.get(pname, [pname]))
                errors.append({"field": fields, "rule": "key-length",
                               "message": f"partition {pname!r} cannot hold this value of {fields}: {problem}"})
        if errors:
            raise ValidationError(errors)

    def _from_stored(self, id: str, metadata: dict[str, str], body: bytes) -> dict[str, Any]:
        try:
            return {"id": id, **decode_record(metadata, body)}
        except (ValueError, TypeError, KeyError, IndexError, RecursionError) as e:
            key = self._key(id)
            raise DamagedRecordError(
                key, f"{self.name}: damaged record {key!r} on {self.storage.describe()} ({type(e).__name__})"
            ) from None

    def _skip_damaged(self, error: DamagedRecordError) -> None:
        """A listing meets a damaged record: log it with an error id, count it, go on."""
        self.db.stats.damaged_records += 1
        log.error(
            "damaged record skipped",
            error_id=uuid.uuid4().hex[:12],
            resource=self.name,
            key=error.key,
        )

    async def _emit(
        self, event: str, record: dict[str, Any], previous: dict[str, Any] | None, version: int,
        etag: str | None = None,
    ) -> None:
        # Built once: the broker gives this very object its stream position.
        await self.db._publish(
            Change.for_stream(self.name, event, record, previous, int(time.time() * 1000), version, etag)  # type: ignore[arg-type]
        )

    # -- reads ------------------------------------------------------------------------------
    async def get_versioned(self, id: str, *, consistency: str = "store") -> Versioned | None:
        """The stored record with its ETag and system version (1 GET), or None if it does not
        exist. Unpacks as ``(record, etag)``; ``.version`` is the record's version. With
        ``consistency="cache"`` and the record cache on, a hot read costs nothing; its ETag is
        "" where the cache does not know it, so such a result is for reading only (never pass
        it to ``update``/``delete`` as ``current``)."""
        validate_id(id)
        cache = self.db.cache
        if cache is not None and consistency == "cache":
            return await self._read_cached(cache, id)
        found = await self._read(id)
        return found[0] if found else None

    async def _read_cached(self, cache: RecordCache, id: str) -> Versioned | None:
        """A read through the record cache: a hit costs nothing; a miss reads the store and
        keeps what it found when no change raced it and the stream has caught up."""
        hit, record, version, etag = cache.lookup_versioned(self.name, id)
        if hit:
            return None if record is None else Versioned(record, etag or "", version)
        begun = cache.begin()
        found = await self._read(id)
        cache.read_outside(self.name, id)
        settled = await cache.settled(self.name)  # else what was read may be ahead
        if not settled:
            cache.unsettled(self.name, id)
        elif found is None:
            cache.fill(self.name, id, None, None, 0, begun)
        else:
            versioned, obj = found
            cache.fill(self.name, id, versioned.record, obj.etag, versioned.version, begun,
                       _stored_size(obj))  # fmt: skip
        return found[0] if found is not None else None

    async def get_or_none(self, id: str, *, consistency: str = "cache") -> dict[str, Any] | None:
        """The record, or None. With the record cache on, a hot read costs no request;
        ``consistency="store"`` reads the store whatever the cache holds."""
        validate_id(id)
        cache = self.db.cache
        if cache is not None and consistency != "store":
            found = await self._read_cached(cache, id)
            return found.record if found is not None else None
        try:  # the record alone: no Versioned to build on the most common read
            obj = await self.storage.get(self._key(id))
        except ObjectNotFound:
            return None
        return self._from_stored(id, obj.metadata, obj.body)

    async def get(self, id: str, *, consistency: str = "cache") -> dict[str, Any]:
        """The record (``NotFoundError`` if none); ``consistency`` as in ``get_or_none``."""
        record = await self.get_or_none(id, consistency=consistency)
        if record is None:
            raise NotFoundError(f"{self.name} {id!r} not found")
        return record

    async def exists(self, id: str) -> bool:
        validate_id(id)
        cache = self.db.cache
        if cache is not None:
            hit, record = cache.lookup(self.name, id)
            if hit:
                return record is not None
        try:
            await self.storage.head(self._key(id))
        except ObjectNotFound:
            return False
        return True

    # -- writes -----------------------------------------------------------------------------
    async def insert(self, data: dict[str, Any]) -> dict[str, Any]:
        """Validate and create a record (create-only write); ConflictError if the id exists."""
        if not isinstance(data, dict):
            raise ValidationError([{"field": "", "rule": "type", "message": "a record must be an object"}])
        db = self.db
        max_depth = db.limits.max_depth
        check_depth(data, max_depth)  # before any hook sees it
        data = dict(data)
        if db.pm.hook.s3db_before_insert.get_hookimpls():
            await db._call_hook("s3db_before_insert", resource=self, data=data)
            check_depth(data, max_depth)  # a hook may have deepened it
        given = data.pop("id", None)
        id = validate_id(given) if given is not None else new_id()
        data.pop("createdAt", None)
        data.pop("updatedAt", None)
        fields = self.schema.validate(data)
        if self.timestamps:
            fields["createdAt"] = fields["updatedAt"] = now_iso()
        record = {"id": id, **fields}
        metadata, body = self._encode(fields, 1)
        key = self._key(id)
        refs = list(self._partition_keys(record).values()) if self.partitions else []
        self._check_keys(record, [key, *refs])
        # Partition references first: a record is never committed (nor acknowledged) before it
        # can be listed in its partitions. A reference whose record is missing is skipped by
        # every listing (and removed by repair).
        if refs:
            await _all([self.storage.put(k, self._ref_body(), {}) for k in refs])
        try:
            etag = await self.storage.put(key, body, metadata, if_none_match=True)
        except (PreconditionFailed, StorageError) as exc:
            # A create-only PUT that met an object, or whose reply never came: if the object
            # stored is this very write (its reply was lost and a retry met it), it succeeded.
            try:
                existing = await self._read(id)
            except StorageError:
                # The store cannot tell either: leave the references (listings skip a reference
                # without its record; repair removes it) rather than wait on it once more.
                if isinstance(exc, StorageError):
                    raise exc from None
                raise
            if existing is not None and _write_token(existing[1].body) == _write_token(body):
                await self._emit("insert", record, None, 1, existing[1].etag)
                return record
            if isinstance(exc, StorageError):
                # Not stored yet, but a store that got the request may still apply it after
                # the timeout: the references stay, so that the record is listed if it appears.
                raise
            keep = set(self._partition_keys(existing[0].record).values()) if existing else set()
            await self._forget_refs([k for k in refs if k not in keep])
            raise ConflictError(f"{self.name} {id!r} already exists") from None
        await self._emit("insert", record, None, 1, etag)
        return record

    async def _peek(self, id: str) -> tuple[Versioned, Any] | None:
        """``_read`` for a check after a failure: None when the store cannot tell either."""
        try:
            return await self._read(id)
        except StorageError:
            return None

    async def _forget_refs(self, keys: list[str]) -> None:
        """Remove partition references of a write that did not happen (best effort: one left
        behind is skipped by listings and removed by repair)."""
        if keys:
            with contextlib.suppress(StorageError):
                await _all([self.storage.delete(k) for k in keys])

    async def update(
        self,
        id: str,
        data: dict[str, Any] | Callable[[dict[str, Any]], Any],
        *,
        current: tuple[dict[str, Any], str] | None = None,
        expected_version: int | None = None,
        check: Callable[[dict[str, Any]], Any] | None = None,
    ) -> dict[str, Any]:
        """Merge a patch into the stored record, guarded by its ETag (compare-and-set).

        ``data`` is the patch, or a function ``fn(current) -> patch`` (sync or async) that is
        run again on every attempt against the record actually being replaced: the safe
        read-modify-write. A plain patch is re-applied to a newer record when the write loses
        a race, unless the caller said what it read: with ``current`` (a ``get_versioned``
        result, which also saves the first read) or ``expected_version``, a record that changed
        since raises ``ConflictError`` instead. ``check(current)`` (sync or async) runs before
        every attempt against the record about to be replaced, so a permission check (a
        guard) sees each retry's record; it vetoes by raising. With ``check``, a stale
        ``current`` is re-read and checked again rather than a conflict. ``s3db_before_update``
        hooks run on every attempt with a fresh copy of the patch.
        """
        validate_id(id)
        if expected_version is not None and (
            not isinstance(expected_version, int) or isinstance(expected_version, bool)
        ):
            raise ValidationError(
                [{"field": "version", "rule": "integer", "message": "version must be an integer"}]
            )
        async with _Hold(self._locks, id):  # one coroutine: the loop runs inside the lock
            compute = data if callable(data) else None
            # A caller that said what it read gets a conflict, not its patch applied to a newer record.
            strict = compute is None and check is None and current is not None
            # What the last attempt wrote, in case its reply was lost after the store committed it.
            sent: tuple[bytes, dict[str, Any], dict[str, Any], int] | None = None
            for attempt in range(UPDATE_ATTEMPTS):
                if expected_version is not None and expected_version < self._locks.committed(id):
                    raise self._stale(id, f"is past version {expected_version}")
                if current is None or getattr(current, "version", None) is None:
                    found = await self._read(id)
                    if found is None:
                        raise NotFoundError(f"{self.name} {id!r} not found")
                    stored, obj = found
                    if sent is not None and _write_token(obj.body) == sent[0]:
                        # Our write did land (its reply was lost and a retry met our own version).
                        _, record, previous, version = sent
                        return await self._updated(id, record, previous, version, etag=obj.etag)
                    if current is not None and current[1] != obj.etag and strict:
                        raise self._stale(id)
                    current = stored
                previous, etag = current
                version = current.version  # type: ignore[attr-defined]
                current = None
                if strict and version < self._locks.committed(id):
                    raise self._stale(id)  # this process has committed a newer version meanwhile
                if expected_version is not None and version != expected_version:
                    raise self._stale(id, f"is at version {version}, not {expected_version}")
                if check is not None:
                    await await_me_maybe(check(previous))
                if compute is not None:
                    patch = await await_me_maybe(compute(previous))
                    if not isinstance(patch, dict):
                        raise TypeError(f"{self.name} update: the patch must be a dict, got {type(patch).__name__}")
                    patch = dict(patch)
                else:
                    patch = dict(data)  # type: ignore[arg-type]
                await self.db._call_hook(
                    "s3db_before_update", resource=self, id=id, data=patch, current=previous
                )
                # One depth walk, of the merged record: it holds every value of the patch, and the
                # merge itself only recurses as deep as the stored record (checked when written).
                merged = merge_patch(previous, patch, self.schema.fields, skip=SYSTEM_FIELDS)
                check_depth(merged, self.db.limits.max_depth)
                fields = self.schema.validate(merged)
                if self.timestamps:
                    fields["createdAt"] = previous.get("createdAt") or now_iso()
                    fields["updatedAt"] = now_iso()
                record = {"id": id, **fields}
                metadata, body = self._encode(fields, version + 1)
                stale_refs: list[str] = []
                if self.partitions:
                    old_refs = self._partition_keys(previous)
                    new_keys = self._partition_keys(record)
                    new_refs = [k for p, k in new_keys.items() if old_refs.get(p) != k]
                    stale_refs = [k for p, k in old_refs.items() if new_keys.get(p) != k]
                    if new_refs:  # references first, as on insert: committed means listed
                        self._check_keys(record, new_refs)
                        await _all([self.storage.put(k, self._ref_body(), {}) for k in new_refs])
                try:
                    new_etag = await self.storage.put(self._key(id), body, metadata, if_match=etag)
                except StorageError:
                    # No reply at all: the write may have landed; if the store holds it, it did.
                    found = await self._peek(id)
                    if found is not None and _write_token(found[1].body) == _write_token(body):
                        return await self._updated(id, record, previous, version + 1, stale_refs,
                                                   etag=found[1].etag)  # fmt: skip
                    raise
                except PreconditionFailed:
                    # Lost the race, or won it and lost the reply: the next read tells which.
                    sent = (_write_token(body), record, previous, version + 1)
                    if strict or expected_version is not None:
                        found = await self._read(id)
                        if found is not None and _write_token(found[1].body) == sent[0]:
                            return await self._updated(id, record, previous, version + 1,
                                                       stale_refs, etag=found[1].etag)  # fmt: skip
                        raise self._stale(id) from None
                    await asyncio.sleep(random.uniform(0, min(0.2, 0.002 * 2 ** min(attempt, 10))))
                    continue
                return await self._updated(id, record, previous, version + 1, stale_refs,
                                           etag=new_etag)  # fmt: skip
            raise ConflictError(f"{self.name} {id!r} changed {UPDATE_ATTEMPTS} times during the update")

    async def _updated(
        self,
        id: str,
        record: dict[str, Any],
        previous: dict[str, Any],
        version: int,
        stale_refs: list[str] | None = None,
        etag: str | None = None,
    ) -> dict[str, Any]:
        """Announce a committed update (right after the write that committed it, so per record
        changes go out in commit order), then remove the references it moved away from."""
        self._locks.note(id, version)
        await self._emit("update", record, previous, version, etag)
        if stale_refs is None and self.partitions:
            new = self._partition_keys(record)
            stale_refs = [k for p, k in self._partition_keys(previous).items() if new.get(p) != k]
        if stale_refs:
            await self._forget_refs(stale_refs)
        return record

    async def _read(self, id: str) -> tuple[Versioned, Any] | None:
        try:
            obj = await self.storage.get(self._key(id))
        except ObjectNotFound:
            return None
        return Versioned(
            self._from_stored(id, obj.metadata, obj.body), obj.etag, _stored_version(obj.metadata)
        ), obj

    def _stale(self, id: str, why: str = "changed since it was read") -> ConflictError:
        return ConflictError(f"{self.name} {id!r} {why}")

    async def delete(self, id: str, *, current: tuple[dict[str, Any], str] | None = None) -> dict[str, Any]:
        """Delete a record and its partition references; returns the deleted record.

        The delete is conditional on the ETag of the record read (``current``, or read here), so
        a record changed meanwhile is never deleted unseen: with ``current`` that is a
        ``ConflictError``; otherwise the newer record is read and ``s3db_before_delete`` runs
        again against it."""
        validate_id(id)
        async with _Hold(self._locks, id):
            strict = current is not None
            for attempt in range(UPDATE_ATTEMPTS):
                if current is None:
                    current = await self.get_versioned(id)
                    if current is None:
                        raise NotFoundError(f"{self.name} {id!r} not found")
                record, etag = current
                version = getattr(current, "version", None) or 1
                current = None
                await self.db._call_hook("s3db_before_delete", resource=self, id=id, current=record)
                try:
                    await self.storage.delete(self._key(id), if_match=etag)
                except PreconditionFailed:
                    if strict:
                        raise self._stale(id) from None
                    await asyncio.sleep(random.uniform(0, min(0.2, 0.002 * 2 ** min(attempt, 10))))
                    continue
                self._locks.forget(id)
                await self._emit("delete", record, record, version, etag)
                await self._forget_refs(list(self._partition_keys(record).values()))
                return record
        raise ConflictError(f"{self.name} {id!r} changed {UPDATE_ATTEMPTS} times during the delete")

    # -- listing ----------------------------------------------------------------------------
    def _scan_prefix(self, filter: dict[str, Any] | None) -> tuple[str, bool]:
        """The data prefix, or the prefix of a partition whose every field ``filter`` pins; and
        whether that partition answers the whole filter (it pins nothing else), so that nearly
        every key listed is a match."""
        if not filter or not self.partitions:
            return self._data_prefix, False
        terms = equality_terms(filter)
        best: tuple[int, str, bool] | None = None
        for pname, fields in self.partitions.items():
            if all(terms.get(f) is not None for f in fields) and (best is None or len(fields) > best[0]):
                path = "/".join(f"{f}={_partition_value(terms[f])}" for f in fields)
                exact = set(filter) == set(fields)
                best = (len(fields), f"{self._base}partition={pname}/{path}/", exact)
        return (best[1], best[2]) if best else (self._data_prefix, False)

    async def _fetch(
        self,
        ids: list[str],
        sizes: dict[str, int] | None = None,
        versions: dict[str, int] | None = None,
    ) -> list[dict[str, Any] | None]:
        """The records of ``ids`` (None where one was deleted between LIST and GET): one GET
        each, issued concurrently, at most GET_CONCURRENCY at a time. ``sizes``, when given,
        receives the stored size of each object read (body and metadata), by id; ``versions``
        the system version of each record found."""
        cache = self.db.cache
        if cache is not None and cache.serving:
            return await self._fetch_cached(cache, ids, sizes, versions)
        records = await self._fetch_store(ids, sizes, versions=versions)
        if cache is not None:
            for id in ids:
                cache.read_outside(self.name, id)
        return records

    async def _fetch_cached(
        self,
        cache: RecordCache,
        ids: list[str],
        sizes: dict[str, int] | None,
        versions: dict[str, int] | None = None,
    ) -> list[dict[str, Any] | None]:
        """``_fetch`` through the record cache: hits cost nothing, misses are read and kept."""
        out: list[dict[str, Any] | None] = []
        missing: list[int] = []
        for pos, id in enumerate(ids):
            hit, record, version, _ = cache.lookup_versioned(self.name, id)
            if not hit:
                missing.append(pos)
            elif record is not None:
                if versions is not None:
                    versions[id] = version
                if sizes is not None:
                    entry = cache.lookup_entry(self.name, id)
                    sizes[id] = entry.size if entry is not None else 0
            out.append(record)
        if missing:
            begun = cache.begin()
            found: list[tuple[str, dict[str, Any], str, int, int]] = []
            read = await self._fetch_store([ids[p] for p in missing], sizes, found, versions)
            for pos, record in zip(missing, read, strict=True):
                out[pos] = record
            if found and await cache.settled(self.name):
                for id, record, etag, version, size in found:
                    cache.fill(self.name, id, record, etag, version, begun, size)
            else:
                for id, *_ in found:
                    cache.unsettled(self.name, id)
        return out

    async def _fetch_store(
        self,
        ids: list[str],
        sizes: dict[str, int] | None = None,
        fill: list[tuple[str, dict[str, Any], str, int, int]] | None = None,
        versions: dict[str, int] | None = None,
    ) -> list[dict[str, Any] | None]:
        storage = self.storage
        get_many = getattr(storage, "get_many", None)
        if get_many is not None:  # a client that reads a batch itself (memory: no tasks)
            objects = await get_many([self._key(i) for i in ids])
            decode = self._from_stored
            out: list[dict[str, Any] | None] = []
            for id, obj in zip(ids, objects, strict=True):
                if obj is not None:
                    if sizes is not None:
                        sizes[id] = _stored_size(obj)
                    if versions is not None:
                        versions[id] = _stored_version(obj.metadata)
                try:
                    out.append(None if obj is None else decode(id, obj.metadata, obj.body))
                    if fill is not None and obj is not None:  # kept by the caller's cache
                        fill.append((id, out[-1], obj.etag,  # type: ignore[arg-type]
                                     _stored_version(obj.metadata), _stored_size(obj)))  # fmt: skip
                except DamagedRecordError as error:
                    self._skip_damaged(error)
                    out.append(None)
            return out
        sem = asyncio.Semaphore(GET_CONCURRENCY) if len(ids) > GET_CONCURRENCY else None

        async def one(id: str) -> dict[str, Any] | None:
            try:
                if sem is None:
                    obj = await storage.get(self._key(id))
                else:
                    async with sem:
                        obj = await storage.get(self._key(id))
                if sizes is not None:
                    sizes[id] = _stored_size(obj)
                if versions is not None:
                    versions[id] = _stored_version(obj.metadata)
                record = self._from_stored(id, obj.metadata, obj.body)
                if fill is not None:
                    fill.append((id, record, obj.etag, _stored_version(obj.metadata),
                                 _stored_size(obj)))  # fmt: skip
                return record
            except ObjectNotFound:
                return None  # deleted between LIST and GET
            except DamagedRecordError as error:
                self._skip_damaged(error)
                return None

        return list(await asyncio.gather(*(one(i) for i in ids)))

    async def _ids(self, prefix: str, start_after: str | None, page_size: int, *, cached: bool = True):
        """Yield (ids of one LIST page, more_after_this_page); ``cached=False``: the store's
        own listing whatever the record cache holds (repair)."""
        cache = self.db.cache if cached else None
        if cache is not None:
            kept = await cache.ids(self, prefix)
            if kept is not None:  # the id-set kept by the stream: no LIST
                while True:
                    ids, more = cache.page(kept, start_after, page_size)
                    yield ids, more
                    if not more or not ids:
                        return
                    start_after = ids[-1]
        after = f"{prefix}id={start_after}" if start_after is not None else None
        while True:
            page = await self.storage.list(prefix, start_after=after, max_keys=page_size)
            ids = [k.rsplit("/id=", 1)[1] for k in page.keys]
            if cache is not None:  # what the store lists outranks what the cache holds
                cache.listed(self, prefix, start_after, ids, page.next_start_after is None,
                             page.etags)  # fmt: skip
                start_after = ids[-1] if ids else start_after
            yield ids, page.next_start_after is not None
            if page.next_start_after is None:
                return
            after = page.next_start_after

    async def _all_ids_desc(self, prefix: str, before: str | None) -> list[str]:
        ids: list[str] = []
        # One LIST call where the store allows it (memory, file: each call re-reads the
        # directory, so 1,000-key pages made a desc listing cost ~10x an asc one); S3 still
        # answers 1,000 keys at a time.
        async for chunk, _ in self._ids(prefix, None, DESC_LIST_PAGE):
            ids.extend(chunk)
        ids.reverse()
        if before is not None:
            ids = [i for i in ids if i < before]
        return ids

    async def list(
        self,
        filter: dict[str, Any] | None = None,
        limit: int = 100,
        cursor: str | None = None,
        order: str = "asc",
        *,
        where: Callable[[dict[str, Any]], bool] | None = None,
        scan_limit: int | None = None,
        max_bytes: int | None = None,
    ) -> Page:
        """Records matching ``filter`` in id (creation) order, ``limit`` at a time.

        ``where`` is a further test a record must pass (a caller's read rule); ``scan_limit``
        bounds how many records this call reads: once that many were read the page ends early,
        with a cursor after the last one read (even when none matched). ``max_bytes`` bounds
        the stored size of the records returned: the page ends after the one that reaches it,
        and records are read a few at a time while their size is unknown, so a page of huge
        records never holds many of them in memory."""
        if order not in ("asc", "desc"):
            raise ValidationError([{"field": "order", "rule": "enum", "message": "order must be asc or desc"}])
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValidationError(
                [{"field": "limit", "rule": "range", "message": f"limit must be 1..{MAX_LIST_LIMIT}"}]
            )
        predicate = compile_filter(filter) if filter else None
        if where is not None:
            predicate = where if predicate is None else _both(predicate, where)
        after = _decode_cursor(cursor, order) if cursor is not None else None
        prefix, exact = self._scan_prefix(filter)
        # A partition that answers the whole filter is read like an unfiltered prefix: one page
        # of ``limit`` keys and a GET each. The predicate still runs on what was read, because a
        # record may have moved to another partition after its key was listed (it is skipped,
        # and the next chunk is read).
        sparse = predicate is not None and (not exact or where is not None)
        if order == "desc":
            pages = self._desc_pages(prefix, after)
        else:
            pages = self._ids(prefix, after, MAX_LIST_LIMIT if sparse else limit)
        return await self._collect(pages, predicate, limit, order, sparse, scan_limit, max_bytes)

    async def _desc_pages(self, prefix: str, before: str | None):
        ids = await self._all_ids_desc(prefix, before)
        for i in range(0, len(ids), MAX_LIST_LIMIT):
            yield ids[i : i + MAX_LIST_LIMIT], i + MAX_LIST_LIMIT < len(ids)

    async def _collect(
        self,
        pages,
        predicate: Callable[[dict], bool] | None,
        limit: int,
        order: str,
        sparse: bool,
        scan_limit: int | None = None,
        max_bytes: int | None = None,
    ) -> Page:
        """Read ``pages`` of ids in chunks until ``limit`` records pass ``predicate`` or
        ``scan_limit`` were read, or the records kept reach ``max_bytes`` (stored size). A chunk
        is what is still missing; twice that (at least 50) when matches are ``sparse``; never
        more than the scan budget left, nor than the byte budget left holds at the sizes read
        so far (``BYTES_FIRST_CHUNK`` before any was read)."""
        items: list[dict[str, Any]] = []
        versions: dict[str, int] = {}  # of the records kept
        read_versions: dict[str, int] = {}  # of one chunk's records
        budget = scan_limit
        # Byte budget: what was returned so far, and what was read (to size the next chunk).
        sizes: dict[str, int] | None = {} if max_bytes is not None else None
        kept = read_bytes = read_count = 0
        async for ids, more in pages:
            start = 0
            while start < len(ids):
                missing = limit - len(items)
                step = max(2 * missing, 50) if sparse else max(missing, 1)
                if budget is not None:
                    step = min(step, budget)
                if max_bytes is not None:  # as many as the bytes left hold, at the sizes seen
                    room = max_bytes - kept
                    guess = room * read_count // read_bytes if read_bytes else BYTES_FIRST_CHUNK
                    step = min(step, max(1, guess))
                chunk = ids[start : start + step]
                if sizes is not None:
                    sizes.clear()
                read_versions.clear()
                records = await self._fetch(chunk, sizes, read_versions)
                if sizes is not None:
                    read_bytes += sum(sizes.values())
                    read_count += len(sizes)
                for pos, record in enumerate(records):
                    if record is None or (predicate is not None and not predicate(record)):
                        continue
                    items.append(record)
                    if record["id"] in read_versions:
                        versions[record["id"]] = read_versions[record["id"]]
                    if sizes is not None:
                        kept += sizes.get(record["id"], 0)
                    full = max_bytes is not None and kept >= max_bytes
                    if len(items) == limit or full:
                        done = start + pos == len(ids) - 1 and not more
                        cursor = None if done else _encode_cursor(record["id"], order)
                        return Page(items, cursor, versions)
                start += len(chunk)
                if budget is not None:
                    budget -= len(chunk)
                    if budget <= 0:  # out of scan budget: the page ends after the last id read
                        done = start == len(ids) and not more
                        cursor = None if done else _encode_cursor(chunk[-1], order)
                        return Page(items, cursor, versions)
        return Page(items, None, versions)

    async def query(self, filter: dict[str, Any] | None = None) -> builtins.list[dict[str, Any]]:
        """Every record matching ``filter`` (the whole resource, page by page)."""
        found: builtins.list[dict[str, Any]] = []
        cursor = None
        while True:
            page = await self.list(filter, limit=MAX_LIST_LIMIT, cursor=cursor)
            found.extend(page.items)
            if page.cursor is None:
                return found
            cursor = page.cursor

    async def count(self, filter: dict[str, Any] | None = None) -> int:
        """How many records match ``filter`` (LIST only when there is no filter)."""
        if filter:
            return len(await self.query(filter))
        total = 0
        async for ids, _ in self._ids(self._data_prefix, None, MAX_LIST_LIMIT):
            total += len(ids)
        return total

    def __repr__(self) -> str:
        return f"<Resource {self.name}>"
