"""What a subscription is on the client side: ``Event``, ``Page``, the ``Subscription`` iterator a
user reads, and the ``Stream`` that subscriptions with the same resource and filter share."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from s3db_core import Position
from s3db_core.log import get_logger

from ..protocol import EVENT_KINDS
from .errors import ClientError, SlowConsumer

if TYPE_CHECKING:
    from .client import Client

log = get_logger("s3db.client")



# -- values ------------------------------------------------------------------------------------
class Page(NamedTuple):
    """One page of ``list``: ``items`` and the ``cursor`` of the next page (None at the end)."""

    items: list[dict[str, Any]]
    cursor: str | None


RELOAD = "reload"


@dataclass(frozen=True, slots=True)
class Event:
    """A change pushed by the server: ``event`` is ``insert``, ``update`` or ``delete``
    (``leave`` when a record left what you may see), or ``reload`` when the server could not
    replay what happened while the client was disconnected (``data`` is then empty): reload
    what you show."""

    resource: str
    event: str
    data: dict[str, Any]
    timestamp: int  # epoch ms
    version: int = 0  # the record's version (1 on insert, +1 per update)
    offset: int | None = None  # stream position of the change
    epoch: str | None = None

    @property
    def position(self) -> Position | None:
        if self.offset is None or self.epoch is None:
            return None
        return Position(self.offset, self.epoch)

    @property
    def is_reload(self) -> bool:
        return self.event == RELOAD


# -- subscriptions -----------------------------------------------------------------------------
class _Closed:
    """Queue sentinel: the iterator ends (``error`` None) or raises ``error``."""

    __slots__ = ("error",)

    def __init__(self, error: ClientError | None) -> None:
        self.error = error


class Subscription:
    """Live events of one ``subscribe``: an async iterator (also an async context manager).

    ``filter`` is what was asked, ``effective_filter`` what the server applies (a guard may
    narrow it). ``await sub.close()`` unsubscribes and ends the iterator.
    """

    def __init__(
        self,
        client: Client,
        resource: str,
        filter: dict[str, Any] | None,
        events: tuple[str, ...] | None,
        max_pending: int,
        on_reload: Callable[[Subscription], Any] | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.filter = dict(filter or {})
        self.events = events
        self.max_pending = max_pending
        self.on_reload = on_reload
        # subscribe(snapshot=True): the first page of matching records and the next page's cursor.
        self.snapshot: list[dict[str, Any]] | None = None
        self.cursor: str | None = None
        # The last subscribe's ``recovered`` (None when it did not resume).
        self.recovered: bool | None = None
        self._stream: Stream | None = None
        self.effective_filter: dict[str, Any] = dict(self.filter)
        # The kinds the server sends for this subscription's stream (its reply's ``events``).
        self.effective_events: tuple[str, ...] = events or EVENT_KINDS
        self.closed = False
        self._queue: asyncio.Queue[Event | _Closed] = asyncio.Queue()
        self._releasing: asyncio.Task | None = None
        # Running ``on_reload`` coroutines: the loop keeps only weak references to tasks, so
        # one nobody holds could be garbage-collected before it finishes.
        self._callbacks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"<Subscription {self.resource} {self.filter}>"

    def wants(self, kind: str) -> bool:
        if kind == "leave":  # an update that took the record out of what the user may see
            kind = "update"
        return self.events is None or kind in self.events or kind == RELOAD

    @property
    def position(self) -> Position | None:
        """The stream position this subscription has seen everything up to (persist it and
        pass it as ``since`` to pick up where you left off)."""
        return self._stream.position if self._stream is not None else None

    def _reload(self, event: Event) -> None:
        self._push(event)
        if self.on_reload is not None:
            try:
                result = self.on_reload(self)
                if asyncio.iscoroutine(result):
                    task = asyncio.get_running_loop().create_task(result)
                    self._callbacks.add(task)
                    task.add_done_callback(self._callback_done)
            except Exception:
                log.exception("on_reload callback failed", resource=self.resource)

    def _callback_done(self, task: asyncio.Task[Any]) -> None:
        self._callbacks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("on_reload callback failed", resource=self.resource,
                      exc_info=task.exception())  # fmt: skip


    def _push(self, event: Event) -> None:
        if self.closed:
            return
        if self._queue.qsize() >= self.max_pending:
            self._overflow()
            return
        self._queue.put_nowait(event)

    def _overflow(self) -> None:
        """End with ``SlowConsumer`` behind the buffered events and unsubscribe."""
        log.warning(
            "subscription reader too slow, closing it",
            resource=self.resource,
            max_pending=self.max_pending,
        )
        self._end(
            SlowConsumer(
                f"more than {self.max_pending} unread events on {self.resource!r}: "
                "the subscription was closed"
            )
        )
        self._releasing = asyncio.get_running_loop().create_task(self.client.release(self))

    def _end(self, error: ClientError | None = None) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(_Closed(error))

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        item = await self._queue.get()
        if isinstance(item, _Closed):
            self._queue.put_nowait(item)  # every later call ends the same way
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    def drain(self) -> list[Event]:
        """The events received and not read yet, without waiting (the end is left queued)."""
        events: list[Event] = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _Closed):
                self._queue.put_nowait(item)
                break
            events.append(item)
        return events

    async def next(self, timeout: float | None = None) -> Event:
        """The next event, waiting at most ``timeout`` seconds (``None``: no limit).

        Raises the built-in ``TimeoutError`` when no event arrives in time (the subscription
        stays open: call again). Once the subscription has ended it raises what ended it
        (``Forbidden`` when revoked, ``SlowConsumer``, ``Unauthorized``...) or, after
        ``close()``, ``StopAsyncIteration``.
        """
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    async def close(self) -> None:
        """Unsubscribe (if no other subscription of this client needs the same stream)."""
        if self.closed:
            return
        self._end()
        await self.client.release(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Stream:
    """The server-side subscription that client subscriptions with the same resource and
    filter share (the server keeps one per resource and filter on a connection)."""

    # Records whose last version a stream remembers, to drop a stale or repeated change.
    MAX_VERSIONS = 10_000

    def __init__(self, resource: str, filter: dict[str, Any]) -> None:
        self.resource = resource
        self.filter = filter
        self.effective: dict[str, Any] = dict(filter)
        self.subs: list[Subscription] = []
        # Everything up to ``position`` was received; ``live`` while subscribed on this socket.
        self.position: Position | None = None
        self.live = False
        self.versions: OrderedDict[Any, int] = OrderedDict()

    def fresh(self, event: Event) -> bool:
        """False for an event this stream already got: at or before its position, or a record
        version at or before one it saw (a delete ranks after its version's update)."""
        position = self.position
        if (
            event.offset is not None
            and position is not None
            and event.epoch == position.epoch
            and event.offset <= position.offset
        ):
            return False
        record_id = event.data.get("id")
        if not event.version or not isinstance(record_id, str | int):
            return True
        new = event.version * 2 + (event.event == "delete")
        old = self.versions.get(record_id)
        if old is not None:
            if new <= old and not (event.event == "insert" and old & 1):
                return False
            self.versions.move_to_end(record_id)
        self.versions[record_id] = new
        if len(self.versions) > self.MAX_VERSIONS:
            self.versions.popitem(last=False)
        return True

    def advance(self, event: Event) -> bool:
        """Move the position to ``event``'s; False when it comes from another epoch than the
        one this live stream was following (changes may have been lost in between)."""
        if event.offset is None or event.epoch is None:
            return True
        position = self.position
        if position is None or position.epoch != event.epoch:
            self.position = Position(event.offset, event.epoch)
            return position is None
        if event.offset > position.offset:
            self.position = Position(event.offset, event.epoch)
        return True

    # -- what the client does with the subscriptions sharing the stream ---------------------
    def attach(self, sub: Subscription) -> None:
        """``sub`` shares this stream from now on (before its request: events may follow the
        reply at once); its ``position`` is the stream's."""
        self.subs.append(sub)
        sub._stream = self

    def push(self, event: Event, subs: list[Subscription] | None = None) -> None:
        """Hand ``event`` to ``subs`` (those of this stream that want it), or to all of them."""
        for sub in self.subs if subs is None else subs:
            sub._push(event)

    def reload(self, event: Event) -> None:
        """Tell every subscription that changes may have been lost (a ``reload`` event, and
        each one's ``on_reload``)."""
        for sub in list(self.subs):
            sub._reload(event)

    def end(self, error: ClientError | None = None) -> None:
        """End every subscription's iterator (raising ``error`` to its reader, if given)."""
        for sub in self.subs:
            sub._end(error)

    def events(self) -> list[str] | None:
        if any(s.events is None for s in self.subs):
            return None
        return [k for k in EVENT_KINDS if any(k in (s.events or ()) for s in self.subs)]

    def frame(self, resume: bool = True) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "subscribe", "resource": self.resource}
        if self.filter:
            frame["filter"] = self.filter
        events = self.events()
        if events is not None:
            frame["events"] = events
        if resume and self.position is not None:
            frame["since"] = self.position.to_dict()
        return frame


class SubscribeCall:
    """What ``Client.subscribe`` returns: await it, or use it as ``async with``."""

    def __init__(self, coro: Awaitable[Subscription]) -> None:
        self._coro = coro
        self._sub: Subscription | None = None

    def __await__(self):
        return self._coro.__await__()

    async def __aenter__(self) -> Subscription:
        self._sub = await self._coro
        return self._sub

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            await self._sub.close()
