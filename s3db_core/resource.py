"""A resource: one collection of records, its keys in the store, and every operation on it.

Layout: ``<prefix>/resource=<name>/data/id=<id>`` holds the record; a partition keeps empty
reference objects at ``<prefix>/resource=<name>/partition=<p>/<field>=<value>/id=<id>`` so that a
filter pinning every field of the partition lists only that prefix.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from .change import Change
from .encoding import BEHAVIORS, decode_record, encode_record
from .errors import ConflictError, NotFoundError, ValidationError
from .ids import new_id, validate_id
from .plugins import await_me_maybe
from .query import compile_filter, equality_terms
from .schema import Schema
from .storage.base import ObjectNotFound, PreconditionFailed, StorageClient

if TYPE_CHECKING:
    from .database import Database

SYSTEM_FIELDS = ("id", "createdAt", "updatedAt")
MAX_LIST_LIMIT = 1000
GET_CONCURRENCY = 64
UPDATE_ATTEMPTS = 100
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

    @property
    def record(self) -> dict[str, Any]:
        return self[0]

    @property
    def etag(self) -> str:
        return self[1]


def _stored_version(metadata: dict[str, str]) -> int:
    """The system version kept in a stored object's metadata (records written before versions
    existed count as version 1)."""
    try:
        return max(1, int(metadata.get(VERSION_KEY, "1")))
    except ValueError:
        return 1


@dataclass(slots=True)
class Page:
    """One page of a listing; pass ``cursor`` back to continue (None: nothing more)."""

    items: list[dict[str, Any]]
    cursor: str | None

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _encode_cursor(last_id: str, order: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"after": last_id, "order": order})).decode()


def _decode_cursor(cursor: str, order: str) -> str:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        after, cursor_order = data["after"], data["order"]
        if not isinstance(after, str) or cursor_order != order:
            raise ValueError
        return after
    except Exception:
        raise ValidationError(
            [{"field": "cursor", "rule": "cursor", "message": "cursor is not one this listing returned"}]
        ) from None


async def _all(operations: list[Any]) -> None:
    """Await store requests concurrently (a lone one directly: no task to schedule)."""
    if len(operations) == 1:
        await operations[0]
    else:
        await asyncio.gather(*operations)


def _partition_value(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return quote(text, safe="")


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
        self._base = f"resource={name}/"  # the storage client adds the connection's prefix
        self._data_prefix = f"{self._base}data/"

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
        return f"{self._data_prefix}id={id}"

    def _partition_keys(self, record: dict[str, Any]) -> dict[str, str]:
        keys = {}
        for pname, fields in self.partitions.items():
            values = [record.get(f) for f in fields]
            if any(v is None for v in values):
                continue
            path = "/".join(f"{f}={_partition_value(v)}" for f, v in zip(fields, values, strict=True))
            keys[pname] = f"{self._base}partition={pname}/{path}/id={record['id']}"
        return keys

    def _to_stored(self, record: dict[str, Any], version: int = 1) -> tuple[dict[str, str], bytes]:
        fields = {k: v for k, v in record.items() if k != "id"}
        return encode_record(fields, self.behavior, {VERSION_KEY: str(version)})

    def _from_stored(self, id: str, metadata: dict[str, str], body: bytes) -> dict[str, Any]:
        return {"id": id, **decode_record(metadata, body)}

    async def _emit(
        self, event: str, record: dict[str, Any], previous: dict[str, Any] | None, version: int
    ) -> None:
        await self.db._publish(
            Change(self.name, event, record, previous, int(time.time() * 1000), version)  # type: ignore[arg-type]
        )

    # -- reads ------------------------------------------------------------------------------
    async def get_versioned(self, id: str) -> Versioned | None:
        """The stored record with its ETag and system version (1 GET), or None if it does not
        exist. Unpacks as ``(record, etag)``; ``.version`` is the record's version."""
        validate_id(id)
        try:
            obj = await self.storage.get(self._key(id))
        except ObjectNotFound:
            return None
        return Versioned(
            self._from_stored(id, obj.metadata, obj.body), obj.etag, _stored_version(obj.metadata)
        )

    async def get_or_none(self, id: str) -> dict[str, Any] | None:
        found = await self.get_versioned(id)
        return found[0] if found else None

    async def get(self, id: str) -> dict[str, Any]:
        found = await self.get_versioned(id)
        if found is None:
            raise NotFoundError(f"{self.name} {id!r} not found")
        return found[0]

    async def exists(self, id: str) -> bool:
        validate_id(id)
        try:
            await self.storage.head(self._key(id))
        except ObjectNotFound:
            return False
        return True

    # -- writes -----------------------------------------------------------------------------
    async def insert(self, data: dict[str, Any]) -> dict[str, Any]:
        """Validate and create a record (create-only write); ConflictError if the id exists."""
        data = dict(data)
        await self.db._call_hook("s3db_before_insert", resource=self, data=data)
        given = data.pop("id", None)
        id = validate_id(given) if given is not None else new_id()
        data.pop("createdAt", None)
        data.pop("updatedAt", None)
        record = {"id": id, **self.schema.validate(data)}
        if self.timestamps:
            record["createdAt"] = record["updatedAt"] = now_iso()
        metadata, body = self._to_stored(record, 1)
        try:
            await self.storage.put(self._key(id), body, metadata, if_none_match=True)
        except PreconditionFailed:
            raise ConflictError(f"{self.name} {id!r} already exists") from None
        refs = self._partition_keys(record)
        if refs:
            await _all([self.storage.put(k, b"", {}) for k in refs.values()])
        await self._emit("insert", record, None, 1)
        return record

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
        compute = data if callable(data) else None
        # A caller that said what it read gets a conflict, not its patch applied to a newer record.
        strict = compute is None and check is None and current is not None
        for attempt in range(UPDATE_ATTEMPTS):
            if current is None:
                current = await self.get_versioned(id)
                if current is None:
                    raise NotFoundError(f"{self.name} {id!r} not found")
            previous, etag = current
            version = getattr(current, "version", None)
            if version is None:  # a bare (record, etag) pair: read the version once
                found = await self.get_versioned(id)
                if found is None:
                    raise NotFoundError(f"{self.name} {id!r} not found")
                if found.etag != etag:
                    if strict:
                        raise self._stale(id)
                    current = found
                    previous, etag = found
                version = found.version
            current = None
            if expected_version is not None and version != expected_version:
                raise self._stale(id, f"is at version {version}, not {expected_version}")
            if check is not None:
                await await_me_maybe(check(previous))
            patch = await await_me_maybe(compute(previous)) if compute is not None else dict(data)  # type: ignore[arg-type]
            if not isinstance(patch, dict):
                raise TypeError(f"{self.name} update: the patch must be a dict, got {type(patch).__name__}")
            patch = dict(patch)
            await self.db._call_hook(
                "s3db_before_update", resource=self, id=id, data=patch, current=previous
            )
            merged = {k: v for k, v in previous.items() if k not in SYSTEM_FIELDS}
            merged.update({k: v for k, v in patch.items() if k not in SYSTEM_FIELDS})
            record = {"id": id, **self.schema.validate(merged)}
            if self.timestamps:
                record["createdAt"] = previous.get("createdAt") or now_iso()
                record["updatedAt"] = now_iso()
            metadata, body = self._to_stored(record, version + 1)
            try:
                await self.storage.put(self._key(id), body, metadata, if_match=etag)
            except PreconditionFailed:
                if strict:
                    raise self._stale(id) from None
                await asyncio.sleep(random.uniform(0, min(0.2, 0.002 * 2 ** min(attempt, 10))))
                continue
            await self._emit("update", record, previous, version + 1)
            await self._move_partitions(previous, record)
            return record
        raise ConflictError(f"{self.name} {id!r} changed {UPDATE_ATTEMPTS} times during the update")

    def _stale(self, id: str, why: str = "changed since it was read") -> ConflictError:
        return ConflictError(f"{self.name} {id!r} {why}")

    async def _move_partitions(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        old, new = self._partition_keys(before), self._partition_keys(after)
        ops = [self.storage.put(k, b"", {}) for p, k in new.items() if old.get(p) != k]
        ops += [self.storage.delete(k) for p, k in old.items() if new.get(p) != k]
        if ops:
            await _all(ops)

    async def delete(self, id: str, *, current: tuple[dict[str, Any], str] | None = None) -> dict[str, Any]:
        """Delete a record and its partition references; returns the deleted record."""
        if current is None:
            current = await self.get_versioned(id)
            if current is None:
                raise NotFoundError(f"{self.name} {id!r} not found")
        record = current[0]
        version = getattr(current, "version", 1)
        await self.db._call_hook("s3db_before_delete", resource=self, id=id, current=record)
        await self.storage.delete(self._key(id))
        refs = self._partition_keys(record)
        if refs:
            await _all([self.storage.delete(k) for k in refs.values()])
        await self._emit("delete", record, record, version)
        return record

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

    async def _fetch(self, ids: list[str]) -> list[dict[str, Any] | None]:
        """The records of ``ids`` (None where one was deleted between LIST and GET): one GET
        each, issued concurrently, at most GET_CONCURRENCY at a time."""
        storage = self.storage
        get_many = getattr(storage, "get_many", None)
        if get_many is not None:  # a client that reads a batch itself (memory: no tasks)
            objects = await get_many([self._key(i) for i in ids])
            decode = self._from_stored
            return [
                None if obj is None else decode(id, obj.metadata, obj.body)
                for id, obj in zip(ids, objects, strict=True)
            ]
        sem = asyncio.Semaphore(GET_CONCURRENCY) if len(ids) > GET_CONCURRENCY else None

        async def one(id: str) -> dict[str, Any] | None:
            try:
                if sem is None:
                    obj = await storage.get(self._key(id))
                else:
                    async with sem:
                        obj = await storage.get(self._key(id))
            except ObjectNotFound:
                return None  # deleted between LIST and GET
            return self._from_stored(id, obj.metadata, obj.body)

        return list(await asyncio.gather(*(one(i) for i in ids)))

    async def _ids(self, prefix: str, start_after: str | None, page_size: int):
        """Yield (ids of one LIST page, more_after_this_page)."""
        after = f"{prefix}id={start_after}" if start_after is not None else None
        while True:
            page = await self.storage.list(prefix, start_after=after, max_keys=page_size)
            ids = [k.rsplit("/id=", 1)[1] for k in page.keys]
            yield ids, page.next_start_after is not None
            if page.next_start_after is None:
                return
            after = page.next_start_after

    async def _all_ids_desc(self, prefix: str, before: str | None) -> list[str]:
        ids: list[str] = []
        async for chunk, _ in self._ids(prefix, None, MAX_LIST_LIMIT):
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
    ) -> Page:
        """Records matching ``filter`` in id (creation) order, ``limit`` at a time."""
        if order not in ("asc", "desc"):
            raise ValidationError([{"field": "order", "rule": "enum", "message": "order must be asc or desc"}])
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValidationError(
                [{"field": "limit", "rule": "range", "message": f"limit must be 1..{MAX_LIST_LIMIT}"}]
            )
        predicate = compile_filter(filter) if filter else None
        after = _decode_cursor(cursor, order) if cursor is not None else None
        prefix, exact = self._scan_prefix(filter)
        # A partition that answers the whole filter is read like an unfiltered prefix: one page
        # of ``limit`` keys and a GET each. The predicate still runs on what was read, because a
        # record may have moved to another partition after its key was listed (it is skipped,
        # and the next chunk is read).
        sparse = predicate is not None and not exact
        if order == "desc":
            return await self._collect(self._desc_pages(prefix, after), predicate, limit, order, sparse)
        page_size = MAX_LIST_LIMIT if sparse else limit
        return await self._collect(
            self._ids(prefix, after, page_size), predicate, limit, order, sparse
        )

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
    ) -> Page:
        """Read ``pages`` of ids in chunks until ``limit`` records pass ``predicate``. A chunk is
        what is still missing; twice that (at least 50) when matches are ``sparse``."""
        items: list[dict[str, Any]] = []
        async for ids, more in pages:
            missing = limit - len(items)
            step = max(2 * missing, 50) if sparse else max(missing, 1)
            for start in range(0, len(ids), step):
                chunk = ids[start : start + step]
                for pos, record in enumerate(await self._fetch(chunk)):
                    if record is None or (predicate is not None and not predicate(record)):
                        continue
                    items.append(record)
                    if len(items) == limit:
                        last = start + pos == len(ids) - 1
                        done = last and not more
                        return Page(items, None if done else _encode_cursor(record["id"], order))
        return Page(items, None)

    async def query(self, filter: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every record matching ``filter`` (the whole resource, page by page)."""
        found: list[dict[str, Any]] = []
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
