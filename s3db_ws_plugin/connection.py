"""One client socket: who it is, what it subscribed to, and how frames reach it.

Sending never blocks the caller (a change is fanned out to many connections in one pass):
while nothing is queued and the socket's write buffer is small, a frame is written straight to
the transport; otherwise it joins a bounded per-connection queue that a sender task drains
completely on each wakeup. A queue that would exceed ``max_queue_bytes`` closes the socket with
4408 (slow consumer): frames are never dropped silently. The handler task is the only reader.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from s3db_core.log import get_logger

from .internals import limit_read_size
from .protocol import CloseCode

if TYPE_CHECKING:
    from s3db_auth_drivers import User

    from .subscriptions import Subscription, SubscriptionRegistry

log = get_logger("s3db.ws")

# Direct writes stop once this much is waiting in the transport; the sender takes over.
DIRECT_WRITE_LIMIT = 64 * 1024
# How long a closing handshake may take before the socket is dropped.
CLOSE_TIMEOUT = 5.0


_HEADER_7 = struct.Struct("!BB").pack
_HEADER_16 = struct.Struct("!BBH").pack
_HEADER_64 = struct.Struct("!BBQ").pack


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked, uncompressed text frame (RFC 6455 5.2): the same bytes for every
    receiver, so a change is framed once however many connections it goes to."""
    size = len(payload)
    if size < 126:
        header = _HEADER_7(0x81, size)
    elif size < 65536:
        header = _HEADER_16(0x81, 126, size)
    else:
        header = _HEADER_64(0x81, 127, size)
    return header + payload


def close_frame(code: int, reason: str) -> bytes:
    """A close frame (RFC 6455 5.5.1) for ``code`` and a short UTF-8 ``reason``."""
    body = struct.pack("!H", code) + reason.encode()[:123]
    return struct.pack("!BB", 0x88, len(body)) + body


def _abort_if_stalled(transport: asyncio.WriteTransport | None) -> None:
    """Drop a closing socket whose peer never read what was left to send."""
    if transport is not None and transport.get_write_buffer_size():
        transport.abort()


class Connection:
    """Per-socket state, the send queue and its sender task."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        *,
        client_id: str,
        max_queue_bytes: int,
        compress: bool,
        registry: SubscriptionRegistry,
    ) -> None:
        self.ws = ws
        self.transport = request.transport
        limit_read_size(self.transport)
        self.client_id = client_id
        self.remote = request.remote
        self.user: User | None = None
        self.authenticated = False
        self._registry = registry
        self.opened = time.monotonic()
        self._compress = compress
        self._max_queue_bytes = max_queue_bytes
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._draining = False
        self._closing: tuple[int, str] | None = None
        self._close_task: asyncio.Task | None = None
        self._expiry: asyncio.TimerHandle | None = None
        # Started only when a frame has to wait (see _wake): an idle socket holds no sender
        # task, coroutine or event (~1.5 KiB each at thousands of sockets).
        self._sender: asyncio.Task | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.client_id}>"

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """This connection's subscriptions (the registry owns them)."""
        return self._registry.of(self)

    @property
    def closing(self) -> bool:
        return self._closing is not None or self.ws.closed

    # -- sending ------------------------------------------------------------------------------
    def send(self, payload: bytes, frame: bytes | None = None) -> None:
        """Queue or write one text frame; ``frame`` is ``text_frame(payload)`` if already built."""
        if self._closing is not None or self.ws.closed:  # self.closing, inlined: once per frame
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if (
            not self._queue
            and not self._draining
            and not self._compress
            and transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT
        ):
            transport.write(frame if frame is not None else text_frame(payload))
            return
        if self._queue and self._queued_bytes + len(payload) > self._max_queue_bytes:
            self._overflow()
            return
        self._queue.append(payload)
        self._queued_bytes += len(payload)
        self._wake()

    def _wake(self) -> None:
        """Make sure a sender is draining the queue: start one unless one is running.

        A running sender only ends once the queue is empty, with no await in between, so a frame
        queued while it runs is always picked up by it."""
        if self._sender is None or self._sender.done():
            name = f"ws-sender-{self.client_id}"
            self._sender = asyncio.create_task(self._send_loop(), name=name)

    async def _send_loop(self) -> None:
        """Send everything queued, then end (closing the socket if a close is pending)."""
        try:
            self._draining = True
            try:
                while self._queue:
                    payload = self._queue.popleft()
                    self._queued_bytes -= len(payload)
                    await self.ws.send_frame(payload, WSMsgType.TEXT)
            finally:
                self._draining = False
            if self._closing is not None:
                self._start_close()
        except ConnectionError:  # the peer went away; the handler sees it too
            self._queue.clear()
            self._queued_bytes = 0

    def _overflow(self) -> None:
        """Close with 4408 now: the close frame goes behind what the transport already holds,
        with no closing handshake to wait for since the peer is not reading."""
        log.warning(
            "slow consumer: send queue full, closing",
            client_id=self.client_id,
            queued_bytes=self._queued_bytes,
            limit=self._max_queue_bytes,
        )
        self._queue.clear()
        self._queued_bytes = 0
        self._closing = (CloseCode.SLOW_CONSUMER, "slow consumer: send queue overflow")
        if self._sender is not None:
            self._sender.cancel()
        self.cancel_expiry()
        transport = self.transport
        if transport is None:
            return
        transport.write(close_frame(*self._closing))
        transport.close()  # flushes what is buffered, then closes
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, _abort_if_stalled, transport)

    # -- closing ------------------------------------------------------------------------------
    def close(self, code: int, reason: str) -> None:
        """Close after every frame already accepted has been written (no new frames accepted)."""
        if self._closing is not None or self.ws.closed:
            return
        self._closing = (code, reason)
        self.cancel_expiry()
        if self._queue or self._draining:
            self._wake()  # the sender closes once the queue is empty
        else:
            if self._sender is not None:
                self._sender.cancel()
            self._start_close()

    def _start_close(self) -> None:
        if self._close_task is None and self._closing is not None:
            self._close_task = asyncio.create_task(self._close(*self._closing))

    async def _close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()), CLOSE_TIMEOUT)
        except (TimeoutError, ConnectionError):
            _abort_if_stalled(self.transport)

    async def finish(self) -> None:
        """Stop the sender and wait for a close in progress (called when the handler ends)."""
        self.cancel_expiry()
        sender = self._sender
        if sender is not None:
            sender.cancel()
        if self._close_task is not None:
            await asyncio.gather(self._close_task, return_exceptions=True)
        if sender is not None:
            await asyncio.gather(sender, return_exceptions=True)

    # -- token expiry -------------------------------------------------------------------------
    def arm_expiry(self, expires_at: float | None, on_expiry: Any) -> None:
        """Call ``on_expiry(self)`` at the epoch second ``expires_at`` (re-armed on refresh)."""
        self.cancel_expiry()
        if expires_at is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, expires_at - time.time())
        self._expiry = loop.call_at(loop.time() + delay, on_expiry, self)

    def cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
