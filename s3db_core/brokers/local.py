"""The in-process broker (the default): no server, changes stay in this process.

``publish`` gives the change its position and calls every listener in order before returning,
which keeps commit order per resource. Each resource keeps an in-memory ring of its latest
changes (bounded by ``history_size``, ``history_max_bytes`` and ``history_ttl``) so a subscriber
that reconnects to this same process can resume; the epoch is new at every process start (a
restart loses the rings).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from itertools import islice
from typing import Any

from ..change import Change
from ..log import get_logger
from ..plugins import await_me_maybe
from .base import (
    CHANNEL_HISTORY_TTL,
    BrokerOptions,
    ChannelHandler,
    EphemeralHandler,
    Listener,
    Listeners,
    Position,
    encode_change,
    new_epoch,
)

log = get_logger("s3db.broker.local")


class _Changes(deque[Change]):
    """A resource's latest changes, bounded by count and by bytes (each change counted by its
    encoded size, as a networked broker stores it); the newest always stays."""

    __slots__ = ("sizes", "bytes", "max_count", "max_bytes")

    def __init__(self, options: BrokerOptions) -> None:
        super().__init__()
        self.sizes: deque[int] = deque()
        self.bytes = 0
        self.max_count = options.history_size
        self.max_bytes = options.history_max_bytes

    def append(self, change: Change) -> None:
        deque.append(self, change)
        sizes = self.sizes
        size = len(encode_change(change))
        sizes.append(size)
        total = self.bytes + size
        while len(sizes) > 1 and (len(sizes) > self.max_count or total > self.max_bytes):
            deque.popleft(self)
            total -= sizes.popleft()
        self.bytes = total

    def popleft(self) -> Change:
        self.bytes -= self.sizes.popleft()
        return super().popleft()


class _Ring:
    __slots__ = ("changes", "offset")

    def __init__(self, options: BrokerOptions) -> None:
        self.changes = _Changes(options)
        self.offset = 0


class _ChannelRing:
    """A channel's latest messages: (offset, payload), bounded by count and bytes."""

    __slots__ = ("entries", "offset", "bytes", "used", "epoch")

    def __init__(self) -> None:
        self.epoch = new_epoch()  # a ring lost (idle, evicted) and made again is a new epoch
        self.entries: deque[tuple[int, bytes]] = deque()
        self.offset = 0
        self.bytes = 0
        self.used = time.monotonic()


MAX_CHANNEL_RINGS = 10_000  # channels with history one process keeps (least recently used out)


class LocalBroker:
    """In-process broker with a bounded in-memory history per resource."""

    contiguous_offsets = True

    def __init__(self, url: str = "local", config: Mapping[str, Any] | None = None) -> None:
        self.options = BrokerOptions.from_url(url, config)
        self.epoch = new_epoch()
        self.listeners = Listeners()
        self._rings: dict[str, _Ring] = {}
        self._ttl_ms = int(self.options.history_ttl * 1000)
        self._ephemeral: list[EphemeralHandler] = []
        self._channel_handlers: list[ChannelHandler] = []
        self._channel_rings: OrderedDict[str, _ChannelRing] = OrderedDict()

    async def start(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Nothing to disconnect. Listeners stay: a database connected again after
        ``disconnect`` keeps streaming to them (and the history rings stay, same epoch)."""

    def subscribe(self, listener: Listener) -> None:
        self.listeners.add(listener)

    def unsubscribe(self, listener: Listener) -> None:
        self.listeners.remove(listener)

    async def publish(self, change: Change) -> Change:
        ring = self._rings.get(change.resource)
        if ring is None:
            ring = self._rings[change.resource] = _Ring(self.options)
        ring.offset += 1
        change = change.positioned(ring.offset, self.epoch)
        changes = ring.changes
        changes.append(change)
        if changes[0].timestamp < change.timestamp - self._ttl_ms:
            self._expire(changes, change.timestamp)
        await self.listeners.dispatch(change)  # isolated: a listener never fails the write
        return change

    def _expire(self, changes: deque[Change], now_ms: int) -> None:
        horizon = now_ms - self._ttl_ms
        while changes and changes[0].timestamp < horizon:
            changes.popleft()

    async def history_bytes(self, resource: str) -> int:
        """Bytes of changes this broker keeps for ``resource``'s resuming subscribers."""
        ring = self._rings.get(resource)
        return ring.changes.bytes if ring else 0

    async def position(self, resource: str) -> Position:
        ring = self._rings.get(resource)
        return Position(ring.offset if ring else 0, self.epoch)

    async def history(self, resource: str, since: Position) -> list[Change] | None:
        if since.epoch != self.epoch:
            return None
        ring = self._rings.get(resource)
        last = ring.offset if ring else 0
        if since.offset > last or since.offset < 0:
            return None
        if since.offset == last:
            return []
        assert ring is not None
        self._expire(ring.changes, int(time.time() * 1000))
        changes = ring.changes
        first = (changes[0].offset or 0) if changes else last + 1
        if since.offset + 1 < first:  # part of what followed has left the ring
            return None
        return list(islice(changes, since.offset + 1 - first, None))

    # -- ephemeral pub/sub (channels): in this process only, never stored -------------------------
    def ephemeral_subscribe(self, handler: EphemeralHandler) -> None:
        self._ephemeral.append(handler)

    def ephemeral_unsubscribe(self, handler: EphemeralHandler) -> None:
        if handler in self._ephemeral:
            self._ephemeral.remove(handler)

    async def ephemeral_publish(self, payload: bytes) -> None:
        for handler in list(self._ephemeral):
            try:  # isolated, as on Redis and NATS: one failing handler never fails the sender
                await await_me_maybe(handler(payload))
            except Exception:
                log.exception("ephemeral_handler_failed")

    # -- channel history: in this process only, never stored --------------------------------------
    def channel_subscribe(self, handler: ChannelHandler) -> None:
        self._channel_handlers.append(handler)

    def channel_unsubscribe(self, handler: ChannelHandler) -> None:
        if handler in self._channel_handlers:
            self._channel_handlers.remove(handler)

    def _channel_ring(self, channel: str, create: bool) -> _ChannelRing | None:
        rings = self._channel_rings
        ring = rings.get(channel)
        now = time.monotonic()
        if ring is not None and now - ring.used > CHANNEL_HISTORY_TTL:  # idle: history lost
            del rings[channel]
            ring = None
        if ring is None:
            if not create:
                return None
            ring = rings[channel] = _ChannelRing()
            while len(rings) > MAX_CHANNEL_RINGS:
                rings.popitem(last=False)
        rings.move_to_end(channel)
        ring.used = now
        return ring

    async def channel_append(
        self, channel: str, payload: bytes, *, keep: int, max_bytes: int
    ) -> Position:
        ring = self._channel_ring(channel, True)
        assert ring is not None
        ring.offset += 1
        entries = ring.entries
        entries.append((ring.offset, payload))
        ring.bytes += len(payload)
        while len(entries) > 1 and (len(entries) > keep or ring.bytes > max_bytes):
            ring.bytes -= len(entries.popleft()[1])
        for handler in list(self._channel_handlers):
            await await_me_maybe(handler(channel, ring.offset, ring.epoch, payload))
        return Position(ring.offset, ring.epoch)

    async def channel_position(self, channel: str) -> Position:
        ring = self._channel_ring(channel, True)
        assert ring is not None
        return Position(ring.offset, ring.epoch)

    async def channel_history(
        self, channel: str, since: Position, *, keep: int, max_bytes: int
    ) -> list[tuple[int, bytes]] | None:
        ring = self._channel_ring(channel, False)
        if ring is None or since.epoch != ring.epoch or not 0 <= since.offset <= ring.offset:
            return None
        count = ring.offset - since.offset
        if count == 0:
            return []
        if count > min(keep, len(ring.entries)):
            return None
        entries = list(islice(ring.entries, len(ring.entries) - count, None))
        if sum(len(p) for _, p in entries) > max_bytes:
            return None
        return entries
