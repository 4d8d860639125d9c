"""What a subscription is on the client side: ``Event``, ``Page``, the ``Subscription`` iterator a
user reads, and the ``Stream`` that subscriptions with the same resource and filter share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import structlog

from .errors import ClientError, SlowConsumer

if TYPE_CHECKING:
    from .client import Client

log = structlog.get_logger("s3db.client")

EVENT_KINDS = ("insert", "update", "delete")


# -- values ------------------------------------------------------------------------------------
class Page(NamedTuple):
    """One page of ``list``: ``items`` and the ``cursor`` of the next page (None at the end)."""

    items: list[dict[str, Any]]
    cursor: str | None


@dataclass(frozen=True, slots=True)
class Event:
    """A change pushed by the server."""

    resource: str
    event: str  # insert | update | delete
    data: dict[str, Any]
    timestamp: int  # epoch ms


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
    ) -> None:
        self.client = client
        self.resource = resource
        self.filter = dict(filter or {})
        self.events = events
        self.max_pending = max_pending
        self.effective_filter: dict[str, Any] = dict(self.filter)
        # The kinds the server sends for this subscription's stream (its reply's ``events``).
        self.effective_events: tuple[str, ...] = events or EVENT_KINDS
        self.closed = False
        self._queue: asyncio.Queue[Event | _Closed] = asyncio.Queue()
        self._releasing: asyncio.Task | None = None

    def __repr__(self) -> str:
        return f"<Subscription {self.resource} {self.filter}>"

    def wants(self, kind: str) -> bool:
        return self.events is None or kind in self.events

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
        """The next event, waiting at most ``timeout`` seconds (``TimeoutError``)."""
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

    def __init__(self, resource: str, filter: dict[str, Any]) -> None:
        self.resource = resource
        self.filter = filter
        self.effective: dict[str, Any] = dict(filter)
        self.subs: list[Subscription] = []

    def events(self) -> list[str] | None:
        if any(s.events is None for s in self.subs):
            return None
        return [k for k in EVENT_KINDS if any(k in (s.events or ()) for s in self.subs)]

    def frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "subscribe", "resource": self.resource}
        if self.filter:
            frame["filter"] = self.filter
        events = self.events()
        if events is not None:
            frame["events"] = events
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
