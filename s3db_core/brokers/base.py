"""What every broker offers, and the pieces the engines share.

A broker appends each durable change to its resource's stream, gives it a ``Position``
(``offset`` strictly increasing within ``epoch``), hands every change of every process to its
listeners in stream order per resource, and answers ``position`` and ``history`` so a subscriber
can resume. The epoch changes whenever a stream's history is lost, so a position from before a
loss is never mistaken for one after it.

``StreamBroker`` is the shared body of the networked engines (Redis, NATS): listeners, the
bounded publish with its ordered outage buffer, the retry task, and bounded ``position`` /
``history`` that answer "reload" (never raise) while the server is unreachable. An engine
supplies ``_connect``, ``_disconnect``, ``_append``, ``_run_reader``, ``_position`` and
``_history``.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit

from ..change import Change
from ..encoding import dumps_body, loads_body
from ..log import get_logger
from ..options import number_in
from ..plugins import await_me_maybe

log = get_logger("s3db.broker")

Listener = Callable[[Change], Awaitable[None] | None]
# Gets each payload of the database's ephemeral pub/sub (``ephemeral_publish``), every process's.
EphemeralHandler = Callable[[bytes], Awaitable[None] | None]
UNAVAILABLE = "unavailable"  # the epoch of a position read while the broker was unreachable


class Position(NamedTuple):
    """Where a change sits in its resource's stream: ``offset`` increases within an ``epoch``.
    The one position type of the server, the brokers and the Python client."""

    offset: int
    epoch: str

    def to_dict(self) -> dict[str, Any]:
        """The wire form, ``{"offset": ..., "epoch": ...}`` (``position`` fields, ``since``)."""
        return {"offset": self.offset, "epoch": self.epoch}

    @classmethod
    def from_value(cls, value: Any) -> Position | None:
        """A ``Position`` from itself or its wire form; None for anything else."""
        if isinstance(value, Position):
            return value
        if isinstance(value, Mapping):
            offset, epoch = value.get("offset"), value.get("epoch")
            if isinstance(offset, int) and not isinstance(offset, bool) and isinstance(epoch, str):
                return cls(offset, epoch)
        return None


@runtime_checkable
class Broker(Protocol):
    """The one interface the core and the plugins see; engines live in their own modules."""

    async def start(self) -> None:
        """Connect and start receiving (``Database.connect`` calls it); bounded, never hangs."""
        ...

    async def close(self) -> None:
        """Stop receiving and disconnect (``Database.disconnect`` calls it)."""
        ...

    def subscribe(self, listener: Listener) -> None:
        """``listener(change)`` (sync or async) gets every change of every process, with its
        position, in stream order per resource."""
        ...

    def unsubscribe(self, listener: Listener) -> None: ...

    async def publish(self, change: Change) -> Change:
        """Append ``change``; return it with its position (without one when the broker is
        unreachable and the change waits in the outage buffer). Never raises, bounded in time."""
        ...

    async def position(self, resource: str) -> Position:
        """Position of ``resource``'s latest change (offset 0 if none yet)."""
        ...

    async def history(self, resource: str, since: Position) -> list[Change] | None:
        """The changes after ``since``, in order; None when ``since`` is not recoverable (another
        epoch, or it has left the bounded history)."""
        ...

    # Ephemeral pub/sub (the WebSocket plugin's channels): payloads every process of the
    # database gets, at most once, never stored, lost while the server is unreachable.
    # ``ephemeral_subscribe(handler)`` / ``ephemeral_unsubscribe(handler)`` (sync or async) and
    # ``async ephemeral_publish(payload: bytes)``; engines without them serve one process.

    # Channel history (channels with ``history``): one sequence of offsets per channel, shared
    # by every process, never stored in the database's store. ``channel_subscribe(handler)`` /
    # ``channel_unsubscribe(handler)``: ``handler(channel, offset, epoch, payload)`` gets every
    # channel message of every process, in offset order per channel.
    # ``async channel_append(channel, payload, *, keep, max_bytes) -> Position`` appends (the
    # channel keeps its latest ``keep`` messages and at most ``max_bytes`` of them; the newest
    # always stays) and delivers. ``async channel_position(channel) -> Position``.
    # ``async channel_history(channel, since, *, keep, max_bytes) -> list[(offset, payload)] |
    # None``: the messages after ``since``; None when ``since`` is another epoch, has left the
    # history, or what follows it passes ``max_bytes``.


# A channel's history is kept until the channel has been idle (no message) this long.
CHANNEL_HISTORY_TTL = 3600.0
CHANNEL_MAX_KEEP = 1000  # the most messages a channel pattern's ``history`` may keep
ChannelHandler = Callable[[str, int, str, bytes], Awaitable[None] | None]


# -- options -------------------------------------------------------------------------------------
_PREFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    """Options shared by the engines, from the URL's query string and ``broker_config``
    (``broker_config`` wins). Units: seconds, counts and bytes."""

    prefix: str = "s3db"  # namespace of the keys / stream: one per database sharing a server
    history_size: int = 1000  # changes kept per resource
    # Bytes of changes (as the broker stores them) kept per resource; the newest is always kept.
    history_max_bytes: int = 8 << 20
    history_ttl: float = 3600.0  # seconds a change stays in history
    publish_timeout: float = 1.0  # bound on one publish attempt
    connect_timeout: float = 5.0  # bound on start()
    buffer_size: int = 10000  # changes held while the broker is unreachable

    @classmethod
    def from_url(cls, url: str, config: Mapping[str, Any] | None = None) -> BrokerOptions:
        query = dict(parse_qsl(urlsplit(url).query)) if "://" in url else {}
        merged: dict[str, Any] = {**query, **(config or {})}
        known = {"prefix", "history_size", "history_ttl", "publish_timeout", "connect_timeout",
                 "buffer_size", "history_max_bytes"}  # fmt: skip
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(f"unknown broker option(s) {unknown}; known: {sorted(known)}")
        defaults = cls()
        prefix = str(merged.get("prefix", defaults.prefix))
        if not _PREFIX.match(prefix):
            raise ValueError("broker option 'prefix' must be 1-64 letters, digits, '_' or '-'")

        def get(name: str, low: float, high: float, kind: type = float) -> Any:
            value = merged.get(name, getattr(defaults, name))
            option = f"broker option {name!r}"
            return number_in(option, value, low, high, integer=kind is int, text=True)

        return cls(
            prefix=prefix,
            history_size=get("history_size", 1, 1_000_000, int),
            history_ttl=get("history_ttl", 0.1, 30 * 86400),
            history_max_bytes=get("history_max_bytes", 1024, 1 << 40, int),
            publish_timeout=get("publish_timeout", 0.01, 60),
            connect_timeout=get("connect_timeout", 0.01, 300),
            buffer_size=get("buffer_size", 0, 10_000_000, int),
        )


def server_url(url: str) -> str:
    """``url`` without its query string (the options), for the engine's client library."""
    parts = urlsplit(url)
    return parts._replace(query="", fragment="").geturl()


def new_epoch() -> str:
    return secrets.token_hex(6)


# -- wire form of a change -------------------------------------------------------------------------
def encode_change(change: Change) -> bytes:
    # The store's own JSON rules: integers beyond 64 bits (which orjson refuses) round-trip too,
    # so a record the store accepted never fails its announcement.
    return dumps_body(
        {
            "r": change.resource,
            "e": change.event,
            "d": change.record,
            "p": change.previous,
            "t": change.timestamp,
            "v": change.version,
            "g": change.etag,
        }
    )


def decode_change(data: bytes, offset: int, epoch: str) -> Change:
    fields = loads_body(data)
    return Change(
        fields["r"], fields["e"], fields["d"], fields["p"], fields["t"], fields["v"], offset, epoch,
        fields.get("g"),
    )


# -- listeners ------------------------------------------------------------------------------------
class Listeners:
    """The broker's listeners (every engine has one such list), called in order. A listener
    that raises is logged with an ``error_id`` and the next one still runs: a change is
    announced after its write is durable, so nothing a listener does may fail that write.

    The list outlives ``close``: a database connected again after ``disconnect`` keeps its
    listeners."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: tuple[Listener, ...] = ()  # replaced, never mutated: safe while dispatching

    def add(self, listener: Listener) -> None:
        self.items = (*self.items, listener)

    def remove(self, listener: Listener) -> None:
        if listener in self.items:
            items = list(self.items)
            items.remove(listener)
            self.items = tuple(items)

    def __len__(self) -> int:
        return len(self.items)

    async def dispatch(self, change: Change) -> None:
        for listener in self.items:
            try:
                await await_me_maybe(listener(change))
            except Exception:
                log.exception(
                    "listener_failed",
                    error_id=secrets.token_hex(8),
                    resource=change.resource,
                    offset=change.offset,
                )


# -- the shared body of networked engines ---------------------------------------------------------
@dataclass(slots=True)
class _Pending:
    change: Change
    publish_id: int  # per broker instance, strictly increasing: the engine's dedupe key
    new_epoch: bool  # changes of this resource were dropped before it: open a new epoch


class StreamBroker:
    """Listeners, a bounded ``publish`` and the ordered outage buffer shared by Redis and NATS.

    A publish attempt is bounded by ``publish_timeout``. When it fails, the change joins a FIFO
    buffer (bounded by ``buffer_size``) that a retry task drains in order, with backoff, once the
    server answers again; while the buffer holds anything, new changes queue behind it so each
    resource keeps its order. Each attempt carries the same publish id, so an attempt that
    reached the server before failing is not appended twice. A change that does not fit in the
    buffer is dropped, and the next change of its resource opens a new epoch: subscribers learn
    the loss (``recovered: false``) instead of meeting a silent gap.
    """

    name = "stream"

    def __init__(self, url: str, config: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.options = BrokerOptions.from_url(url, config)
        self.listeners = Listeners()
        self._buffer: deque[_Pending] = deque()
        self._lost: set[str] = set()  # resources whose next change opens a new epoch
        self._next_id = 0
        self._retry_task: asyncio.Task[None] | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._started = False
        self.dropped = 0  # changes that did not fit in the outage buffer
        # Continuity of this process's reader, for caches (``watch_continuity``).
        self.reading = False
        self._continuity: list[Callable[[str], None]] = []

    # engine hooks
    async def _connect(self) -> None:
        raise NotImplementedError

    async def _disconnect(self) -> None:
        raise NotImplementedError

    async def _interrupt(self) -> None:
        """Break a blocking read the reader task is in (close falls back on it)."""

    async def _append(self, change: Change, publish_id: int, new_epoch: bool) -> Change:
        raise NotImplementedError

    async def _run_reader(self) -> None:
        raise NotImplementedError

    async def _position(self, resource: str) -> Position:
        raise NotImplementedError

    async def _history(self, resource: str, since: Position) -> list[Change] | None:
        raise NotImplementedError

    # reads for resuming subscribers: bounded, and safe when the server is unreachable
    async def position(self, resource: str) -> Position:
        """The latest position; while the server is unreachable, a position no history will
        ever match (``epoch`` ``"unavailable"``), so a resume from it reloads instead of
        missing anything."""
        try:
            async with asyncio.timeout(self.options.publish_timeout * 2):
                return await self._position(resource)
        except Exception as exc:
            log.warning("position_failed", broker=self.name, resource=resource, error=repr(exc))
            return Position(0, UNAVAILABLE)

    async def history(self, resource: str, since: Position) -> list[Change] | None:
        """The changes after ``since``; None (reload) also when the server is unreachable."""
        if since.epoch == UNAVAILABLE:
            return None
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                return await self._history(resource, since)
        except Exception as exc:
            log.warning("history_failed", broker=self.name, resource=resource, error=repr(exc))
            return None

    # lifecycle
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                await self._connect()
            self._continuity_event("up")
        except Exception as exc:  # the store is the source of truth: keep going, retry later
            log.warning("broker_unreachable", broker=self.name, error=repr(exc))
        self._reader_task = asyncio.get_running_loop().create_task(self._run_reader())
        if self._buffer:
            self._start_retry()

    async def close(self) -> None:
        """Stop; changes still waiting in the outage buffer get ``connect_timeout`` to drain
        first (a writer script that exits right after an outage still publishes them)."""
        retry = self._retry_task
        if self._buffer and retry is not None and not retry.done():
            await asyncio.wait({retry}, timeout=self.options.connect_timeout)
        self._started = False
        self._continuity_event("down")
        tasks = {t for t in (self._reader_task, self._retry_task) if t is not None}
        for task in tasks:
            task.cancel()
        if tasks:  # a client library may swallow the cancel: then cut its connection too
            _, running = await asyncio.wait(tasks, timeout=0.05)
            if running:
                await self._interrupt()
                await asyncio.wait(running, timeout=self.options.connect_timeout)
        self._reader_task = self._retry_task = None
        if self._buffer:
            log.warning("broker_closed_with_pending", broker=self.name, pending=len(self._buffer))
        await self._disconnect()

    # continuity of the reader (a record cache serves only while it holds)
    def watch_continuity(self, callback: Callable[[str], None]) -> None:
        """``callback(state)`` (sync) hears the reader's continuity: ``"down"`` (disconnected:
        changes may be missed until ``"up"``), ``"up"`` (reading again, from where it stopped
        where the server still has it: check ``history`` from the last position seen), and
        ``"lost"`` (history this process may not have read is gone: start over)."""
        self._continuity.append(callback)

    def _continuity_event(self, state: str) -> None:
        if state == "down":
            if not self.reading:
                return
            self.reading = False
        elif state == "up":
            if self.reading:
                return
            self.reading = True
        for callback in list(self._continuity):
            try:
                callback(state)
            except Exception:
                log.exception("continuity_callback_failed", broker=self.name, state=state)

    def subscribe(self, listener: Listener) -> None:
        self.listeners.add(listener)

    def unsubscribe(self, listener: Listener) -> None:
        self.listeners.remove(listener)

    @property
    def pending(self) -> int:
        """Changes waiting in the outage buffer."""
        return len(self._buffer)

    # publishing
    async def publish(self, change: Change) -> Change:
        self._next_id += 1
        reset = change.resource in self._lost
        item = _Pending(change, self._next_id, reset)
        if not self._buffer and self._started:
            try:
                async with asyncio.timeout(self.options.publish_timeout):
                    published = await self._append(change, item.publish_id, reset)
                self._lost.discard(change.resource)
                return published
            except Exception as exc:
                log.warning("publish_failed", broker=self.name, resource=change.resource,
                            error=repr(exc))  # fmt: skip
        self._enqueue(item)
        return change

    def _enqueue(self, item: _Pending) -> None:
        resource = item.change.resource
        if len(self._buffer) >= self.options.buffer_size:
            self.dropped += 1
            self._lost.add(resource)
            log.error("publish_dropped", broker=self.name, resource=resource,
                      buffer_size=self.options.buffer_size)  # fmt: skip
            return
        self._lost.discard(resource)
        self._buffer.append(item)
        self._start_retry()

    def _start_retry(self) -> None:
        if self._started and (self._retry_task is None or self._retry_task.done()):
            self._retry_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        delay = 0.05
        while self._buffer and self._started:
            item = self._buffer[0]
            try:
                async with asyncio.timeout(self.options.publish_timeout):
                    await self._append(item.change, item.publish_id, item.new_epoch)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            self._buffer.popleft()
        log.info("broker_buffer_drained", broker=self.name)
