"""``s3db watch STORE_URL --broker BROKER_URL --feed FEED_URL``: writes made outside the stream
(another program on the ``local`` broker, a console, a restore, another library) reach every
subscriber and cache.

The watcher reads the store's own event feed (``s3db_core.feeds``) and, for each record object
written or deleted that the stream did not already carry (same key and ETag, seen on the broker
within ``grace`` seconds of the feed event, and once the watcher has read the stream up to its
latest change, so its own lag behind the stream never doubles a change), reads the record and publishes the change
(insert/update/delete with its version and ETag) to the broker. Partition references are
skipped (they follow their record); ``s3db.json`` makes it read the definitions again; other
keys are ignored. What it cannot vouch for opens a new epoch on the resource's stream, so
subscribers reload instead of missing something:

- a ``gap`` from the feed (it restarted, lost its connection, or the watcher has no saved
  position): every resource;
- an update or delete of a record whose previous state it does not know (it cannot tell which
  subscribers the record left): that resource.

Its position is saved to a local file (``--state``) after every event, written atomically, so a
restart resumes where it stopped (a change may be published twice after a kill -9 between the
publish and the save: subscribers drop a version they already have). An unreadable record or a
malformed feed message is logged with an error id, counted, and skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from s3db_core import Change, Database
from s3db_core.brokers import broker_scheme
from s3db_core.brokers.base import UNAVAILABLE, StreamBroker, new_epoch
from s3db_core.database import METADATA_KEY
from s3db_core.errors import S3dbError
from s3db_core.feeds import FeedEvent, StoreFeed, load_feed
from s3db_core.log import get_logger
from s3db_core.redact import redact

log = get_logger("s3db.watch")

DEFAULT_GRACE = 0.5  # seconds a feed event waits for the stream to carry the same write
CATCH_UP = 5.0  # seconds it waits, at most, to have heard the stream up to its latest change
DEFAULT_REMEMBER = 100_000  # ETags seen on the stream, and records known, kept (each)
KNOWN_MAX_BYTES = 64 << 20  # bytes of records kept to announce their update or delete
DATA = "/data/id="


@dataclass
class WatchStats:
    published: int = 0  # changes the watcher put on the stream
    duplicates: int = 0  # feed events the stream already carried
    skipped: int = 0  # records that could not be read (gone again, damaged)
    ignored: int = 0  # keys that are not records (partition references, other objects)
    gaps: int = 0  # times it opened new epochs because it could not vouch
    epochs: dict[str, int] = field(default_factory=dict)  # new epochs per resource


class Bounded(OrderedDict[Any, Any]):
    """A dict that forgets its oldest entries beyond ``capacity`` entries and, with a ``sizer``,
    beyond ``max_bytes`` of what it sizes (the newest entry is always kept)."""

    def __init__(self, capacity: int, max_bytes: int = 0, sizer: Any = None) -> None:
        super().__init__()
        self.capacity, self.max_bytes, self.sizer = capacity, max_bytes, sizer
        self.bytes = 0
        self._sizes: dict[Any, int] = {}

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if self.sizer is not None:
            size = self.sizer(value)
            self.bytes += size - self._sizes.get(key, 0)
            self._sizes[key] = size
        while len(self) > 1 and (
            len(self) > self.capacity or (self.max_bytes and self.bytes > self.max_bytes)
        ):
            old, _ = self.popitem(last=False)
            self.bytes -= self._sizes.pop(old, 0)

    def clear(self) -> None:
        super().clear()
        self._sizes.clear()
        self.bytes = 0


def _record_size(value: Any) -> int:
    return 64 if value is None else 64 + len(orjson.dumps(value[0]))


class Watcher:
    def __init__(
        self,
        store: str,
        broker: str,
        feed: str,
        state: str | Path,
        *,
        grace: float = DEFAULT_GRACE,
        remember: int = DEFAULT_REMEMBER,
    ) -> None:
        if broker_scheme(broker) == "local":
            raise ValueError("s3db watch needs a shared broker (redis:// or nats://), not local")
        self.db = Database(store, broker=broker)
        self.feed_url = feed
        self.state_path = Path(state)
        self.grace = grace
        self.seen: Bounded = Bounded(remember)  # (key, kind, etag) the stream carried
        # (resource, id) -> (record, version), or None once deleted; bounded by bytes too
        self.known: Bounded = Bounded(remember, KNOWN_MAX_BYTES, _record_size)
        self.stats = WatchStats()
        self.feed: StoreFeed | None = None
        self.heard: dict[str, int] = {}  # resource -> highest offset its stream handed us
        self._heard = asyncio.Event()  # set at each change the stream hands us
        self._identity = hashlib.sha256(f"{redact(store)}|{feed}".encode()).hexdigest()[:16]

    # -- the stream ---------------------------------------------------------------------------
    def _on_stream(self, change: Change) -> None:
        """A change the stream handed us (any process's, our own included)."""
        if change.offset is not None and change.offset > self.heard.get(change.resource, -1):
            self.heard[change.resource] = change.offset
        self._heard.set()
        self._on_change(change)

    async def _caught_up(self, resource: str) -> None:
        """Until the stream has handed us ``resource``'s latest change (at most ``CATCH_UP``
        seconds): on a loaded machine our own reading of the stream may lag behind the store's
        feed by more than ``grace``, and a change the stream already carries must not be
        published again (a duplicate), nor an update it announced be taken for one whose
        previous state is unknown (a needless new epoch)."""
        latest = await self.db.broker.position(resource)
        if latest.offset <= 0 or latest.epoch == UNAVAILABLE:
            return
        try:
            async with asyncio.timeout(CATCH_UP):
                while self.heard.get(resource, -1) < latest.offset:
                    self._heard.clear()
                    await self._heard.wait()
        except TimeoutError:
            log.warning("stream_behind", resource=resource, offset=latest.offset,
                        heard=self.heard.get(resource))  # fmt: skip

    async def _baseline(self) -> None:
        """What the streams held before we listened counts as heard (we never will hear it);
        read once subscribed, so every later change is handed to us."""
        for name in list(self.db.resources):
            latest = await self.db.broker.position(name)
            if latest.epoch != UNAVAILABLE:
                self.heard[name] = max(self.heard.get(name, -1), latest.offset)

    def _on_change(self, change: Change) -> None:
        resource = self.db.resources.get(change.resource)
        record_id = change.record.get("id") if isinstance(change.record, dict) else None
        if resource is None or not isinstance(record_id, str):
            return
        kind = "delete" if change.event == "delete" else "put"
        if change.etag is not None:
            self.seen.put((resource.layout.record_key(record_id), kind, change.etag), None)
        self.known.put(
            (change.resource, record_id),
            None if kind == "delete" else (change.record, change.version),
        )

    # -- position -----------------------------------------------------------------------------
    def load_position(self) -> str | None:
        try:
            saved = orjson.loads(self.state_path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        if not isinstance(saved, dict) or saved.get("identity") != self._identity:
            return None  # another store or feed: not a position of this one
        position = saved.get("position")
        return position if isinstance(position, str) else None

    def save_position(self, position: str) -> None:
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps({"identity": self._identity, "position": position}))
        os.replace(tmp, self.state_path)

    # -- epochs -------------------------------------------------------------------------------
    async def open_epoch(self, resource: str) -> None:
        """Start a new epoch on ``resource``'s stream now: a subscriber resuming from before it
        reloads, and a live one reloads at the next change it receives."""
        broker = self.db.broker
        client = getattr(broker, "_client", None)
        meta_key = getattr(broker, "meta_key", None)
        opened = False
        if client is not None and meta_key is not None:  # redis: the stream's epoch, at once
            try:
                async with asyncio.timeout(broker.options.publish_timeout * 2):  # type: ignore[attr-defined]
                    await client.hset(meta_key(resource), "epoch", new_epoch())
                opened = True
            except Exception as exc:
                log.warning("new_epoch_deferred", resource=resource, error=type(exc).__name__)
        if not opened and isinstance(broker, StreamBroker):  # with the next change appended
            broker._lost.add(resource)
        self.stats.epochs[resource] = self.stats.epochs.get(resource, 0) + 1
        log.warning("new_epoch", resource=resource)

    async def gap(self) -> None:
        self.stats.gaps += 1
        await self._reload_definitions()
        for name in list(self.db.resources):
            await self.open_epoch(name)
        self.known.clear()

    async def _reload_definitions(self) -> None:
        try:
            await self.db.reload_definitions()
        except S3dbError as exc:
            log.error("definitions_unreadable", error=str(exc), error_id=secrets.token_hex(8))

    # -- one event ----------------------------------------------------------------------------
    async def handle(self, event: FeedEvent) -> None:
        if event.kind == "gap":
            await self.gap()
            return
        key = event.key
        if not key:
            return
        if key == METADATA_KEY:
            await self._reload_definitions()
            return
        name, id_ = _record_of(key)
        if name is None or id_ is None:
            self.stats.ignored += 1
            return
        if (key, event.kind, event.etag) in self.seen:
            self.stats.duplicates += 1
            return
        resource = self.db.resources.get(name)
        if resource is None:
            await self._reload_definitions()
            resource = self.db.resources.get(name)
            if resource is None:
                self.stats.ignored += 1
                return
        await self._caught_up(name)
        if (key, event.kind, event.etag) in self.seen:
            self.stats.duplicates += 1
            return
        previous = self.known.get((name, id_), False)  # False: unknown; None: known deleted
        if event.kind == "delete" and not getattr(self.feed, "ordered", True):
            try:  # an unordered feed: the record may have been written again since
                if await resource.get_versioned(id_) is not None:
                    event = FeedEvent("put", key, None, event.position)
            except Exception:  # the store cannot tell: announce the deletion (a later
                pass  # write of the record, if any, is announced by its own event)
        if event.kind == "delete":
            if previous is None:
                return  # already announced as deleted
            if previous is False:
                await self.open_epoch(name)
                record, version = {"id": id_}, 0
            else:
                record, version = previous
            await self._publish(Change(name, "delete", record, record, _now(), version,
                                       etag=event.etag))  # fmt: skip
            return
        try:
            found = await resource.get_versioned(id_)
        except Exception as exc:
            self.stats.skipped += 1
            log.error("record_unreadable", resource=name, id=id_, error=type(exc).__name__,
                      error_id=secrets.token_hex(8))  # fmt: skip
            return
        if found is None:  # gone again: its delete follows in the feed
            self.stats.skipped += 1
            if previous is False:  # nobody heard of it: its delete is no news either
                self.known.put((name, id_), None)
            return
        record, etag = found
        if etag != event.etag and (key, "put", etag) in self.seen:
            self.stats.duplicates += 1  # rewritten since, through the stream
            return
        if previous is not False:
            created = previous is None
        elif event.created is not None:
            created = event.created
        else:  # the feed cannot tell (SQS): a record at its first version was just inserted
            created = found.version <= 1
        if created:
            kind, before = "insert", None
        else:
            if previous is False:
                await self.open_epoch(name)  # cannot tell whom the record left
                before = None
            else:
                before = previous[0] if previous else None
            kind = "update"
        await self._publish(Change(name, kind, record, before, _now(), found.version, etag=etag))  # type: ignore[arg-type]

    async def _publish(self, change: Change) -> None:
        published = await self.db.broker.publish(change)
        self._on_change(published)
        self.stats.published += 1

    async def _published(self, stop: asyncio.Event) -> None:
        """Until the broker holds everything published (not in its outage buffer): a position
        is saved only once the changes before it are on the stream, so a watcher killed while
        the broker is down publishes them again after its restart instead of losing them."""
        while getattr(self.db.broker, "pending", 0) and not stop.is_set():
            await asyncio.sleep(0.1)

    # -- the loop -----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        await self.db.connect()
        storage = self.db.storage
        bucket = getattr(storage, "bucket", None)
        if not isinstance(bucket, str):
            await self.db.disconnect()
            raise ValueError("s3db watch reads an S3 store's event feed: use an s3:// or http(s):// store")
        try:
            feed = self.feed = load_feed(self.feed_url, bucket=bucket,
                                         prefix=getattr(storage, "prefix", ""))  # fmt: skip
        except BaseException:
            await self.db.disconnect()
            raise
        self.db.broker.subscribe(self._on_stream)
        since = self.load_position()
        try:
            if since is None:  # nothing saved: what happened before now cannot be vouched for
                await self.gap()
            await self._baseline()
            # Said once the start-up epochs are open, not before: a subscriber that comes after
            # this line never sees its stream's epoch change under it (a reload) for the start.
            log.info("watch_started", store=storage.describe(), resumed=since is not None)
            if ready is not None:
                ready.set()
            queue: asyncio.Queue[tuple[float, FeedEvent]] = asyncio.Queue(10_000)
            reader = asyncio.ensure_future(_read_feed(feed, since, queue))
            stopping = asyncio.ensure_future(stop.wait())
            while not stop.is_set():
                step = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    {step, stopping, reader}, return_when=asyncio.FIRST_COMPLETED
                )
                if step not in done:
                    step.cancel()
                    if reader in done and reader.exception() is not None:
                        raise reader.exception()  # type: ignore[misc]
                    break
                received, event = step.result()
                wait = self.grace - (time.monotonic() - received)
                if event.kind != "gap" and wait > 0:
                    await asyncio.sleep(wait)
                try:
                    await self.handle(event)
                except Exception:  # never stop the watcher on one event
                    self.stats.skipped += 1
                    log.exception("event_failed", kind=event.kind, error_id=secrets.token_hex(8))
                await self._published(stop)
                if event.position:
                    self.save_position(event.position)
                    commit = getattr(feed, "commit", None)
                    if commit is not None:
                        await commit(event.position)
            stopping.cancel()
            reader.cancel()
        finally:
            await feed.close()
            self.db.broker.unsubscribe(self._on_stream)
            await self.db.disconnect()
            log.info("watch_stopped", **{k: v for k, v in vars(self.stats).items()},
                     malformed=feed.malformed)  # fmt: skip


async def _read_feed(feed: StoreFeed, since: str | None,
                     queue: asyncio.Queue[tuple[float, FeedEvent]]) -> None:
    async for event in feed.events(since):
        await queue.put((time.monotonic(), event))


def _now() -> int:
    return int(time.time() * 1000)


def _record_of(key: str) -> tuple[str | None, str | None]:
    """``(resource, id)`` of a record key ``resource=NAME/data/id=ID``; Nones otherwise."""
    if not key.startswith("resource="):
        return None, None
    name, sep, id_ = key[len("resource="):].partition(DATA)
    if not sep or "/" in name or not id_ or "/" in id_:
        return None, None
    return name, id_


async def watch(store: str, broker: str, feed: str, state: str, grace: float) -> int:
    """``s3db watch``: run a Watcher until SIGINT or SIGTERM."""
    import signal

    try:
        watcher = Watcher(store, broker, feed, state, grace=grace)
    except (S3dbError, ValueError) as exc:
        log.error("cannot watch", error=redact(str(exc)))
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await watcher.run(stop)
    except (S3dbError, ValueError) as exc:
        log.error("cannot watch", error=redact(str(exc)))
        return 1
    return 0
