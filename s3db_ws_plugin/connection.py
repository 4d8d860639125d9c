"""One client socket: who it is, what it subscribed to, and how frames reach it.

Sending never blocks the caller (a change is fanned out to many connections in one pass):
while nothing is queued and the socket's write buffer is small, a frame is written straight to
the transport; otherwise it joins a bounded per-connection queue that a sender task drains
completely on each wakeup. A queue that would exceed ``max_queue_bytes`` closes the socket with
4408 (slow consumer): frames are never dropped silently. The handler task is the only reader.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import secrets
import struct
import time
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Iterable
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
# How long a slow consumer's socket stays open after its 4408 close frame was queued, so a
# reader that resumes still reads what was in flight and then the close frame (not a bare
# disconnect); only a peer that reads nothing for this long is dropped without it.
SLOW_CONSUMER_GRACE = 60.0


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


class PerIpLimits:
    """How many sockets each client address holds, in all and still unauthenticated, against
    the caps ``max_total`` and ``max_unauthenticated`` (None: no cap).

    ``admit`` counts a new socket (in the unauthenticated count too when it will wait for an
    ``auth`` frame) or says why it is refused, ``authenticated`` moves it out of the
    unauthenticated count, ``release`` forgets it. Addresses with no socket are
    dropped, so memory follows the open sockets.
    """

    def __init__(self, max_total: int | None, max_unauthenticated: int | None) -> None:
        # Validated by Settings (max_connections_per_ip, max_unauthenticated_per_ip).
        self.max_total = max_total
        self.max_unauthenticated = max_unauthenticated
        self._total: dict[str, int] = {}
        self._unauthenticated: dict[str, int] = {}

    def admit(self, ip: str, *, unauthenticated: bool) -> str | None:
        """Count one more socket from ``ip`` (``unauthenticated``: it brings no credentials
        and must send an ``auth`` frame); the reason it is refused instead, if it is."""
        total = self._total.get(ip, 0)
        if self.max_total is not None and total >= self.max_total:
            return f"too many connections from your address (limit {self.max_total})"
        if unauthenticated:
            pending = self._unauthenticated.get(ip, 0)
            if self.max_unauthenticated is not None and pending >= self.max_unauthenticated:
                return (
                    "too many connections waiting to authenticate from your address "
                    f"(limit {self.max_unauthenticated})"
                )
            self._unauthenticated[ip] = pending + 1
        self._total[ip] = total + 1
        return None

    def authenticated(self, ip: str) -> None:
        """One socket of ``ip`` has signed in (or was accepted as anonymous)."""
        _decrement(self._unauthenticated, ip)

    def release(self, ip: str, *, authenticated: bool) -> None:
        """One socket of ``ip`` is gone."""
        _decrement(self._total, ip)
        if not authenticated:
            _decrement(self._unauthenticated, ip)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


# -- the client's address ------------------------------------------------------------------------
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PROXY_HEADERS = ("X-Forwarded-For", "Forwarded")


class TrustedProxies:
    """The reverse proxies whose forwarding header names the client (``trusted_proxies``):
    addresses and networks (``"10.0.0.5"``, ``"10.0.0.0/8"``, ``"::1"``), and the one header
    they set, ``X-Forwarded-For`` (default) or ``Forwarded`` (RFC 7239).

    Only one header is read: a proxy that sets ``X-Forwarded-For`` passes a client's own
    ``Forwarded`` header through untouched, so reading both would let any client choose its
    address.
    """

    def __init__(self, proxies: Iterable[str] | str | None, header: str = "X-Forwarded-For") -> None:
        if isinstance(proxies, str):
            proxies = [p for p in proxies.split(",") if p.strip()]
        networks = []
        for proxy in proxies or ():
            try:
                networks.append(ipaddress.ip_network(str(proxy).strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {proxy!r} is not an IP address or network "
                    "(e.g. 10.0.0.5, 10.0.0.0/8, ::1)"
                ) from None
        self.networks = tuple(networks)
        canonical = {h.lower(): h for h in PROXY_HEADERS}
        if not isinstance(header, str) or header.lower() not in canonical:
            raise ValueError(f"proxy_header must be one of {PROXY_HEADERS}")
        self.header = canonical[header.lower()]

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def hops(self, request: web.BaseRequest) -> list[str]:
        """The addresses the forwarding header lists, client first, nearest proxy last."""
        if self.header == "Forwarded":
            return [element.get("for", "") for element in request.forwarded]
        return [
            hop for line in request.headers.getall("X-Forwarded-For", ()) for hop in line.split(",")
        ]


def _parse_address(text: str) -> IPAddress | None:
    """An address from a header's hop (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``"::1"``);
    None for anything else (``unknown``, an obfuscated ``_name``, garbage)."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(request: web.BaseRequest, trusted: TrustedProxies | None = None) -> str:
    """The client's address for this request: what per-address caps, rate-limit keys and logs
    count (a socket keeps it as ``Connection.remote``).

    The peer's address, unless the peer is one of the ``trusted`` proxies: then the rightmost
    address of their forwarding header that is not itself a trusted proxy (what uvicorn's
    ``forwarded_allow_ips`` and aiohttp-remotes do). Hops to the left of it were written by
    the client and are never read; a header from any other peer is ignored.
    """
    peer = request.remote or ""
    if not trusted:
        return peer
    address = _parse_address(peer)
    if address is None or not trusted.trusts(address):
        return peer
    for hop in reversed(trusted.hops(request)):
        found = _parse_address(hop)
        if found is None:  # the nearest proxy could not say: the last known hop is the client
            break
        address = found
        if not trusted.trusts(found):
            break
    return str(address)


class _Started:
    """Awaitable that continues a coroutine already advanced to its first wait by
    ``coro.send(None)``: it hands the future the coroutine waits on to the task running it,
    and relays what the task sends or throws in (what an eager task start does)."""

    __slots__ = ("coro", "waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        self.coro = coro
        self.waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, None]:
        coro, value = self.coro, self.waiting_on
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # cancellation included: the coroutine handles it
                try:
                    value = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = coro.send(sent)
                except StopIteration:
                    return


async def _resume(coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    await _Started(coro, waiting_on)


async def _after(barrier: asyncio.Task | None, coro: Coroutine[Any, Any, None]) -> None:
    if barrier is not None:
        try:
            await asyncio.wait((barrier,))
        except BaseException:
            coro.close()  # cancelled before it started
            raise
    await coro


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
        remote: str | None = None,
    ) -> None:
        self.ws = ws
        self.transport = request.transport
        limit_read_size(self.transport)
        self.client_id = client_id
        # The client's address (``client_address``: behind trusted proxies, the forwarded one).
        self.remote = request.remote if remote is None else remote
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
        # Requests in flight (created on the first one) and the last session-changing one,
        # which every later request waits for (see start_request).
        self._requests: set[asyncio.Task] | None = None
        self._barrier: asyncio.Task | None = None
        # Closed with 4408 because the send queue overflowed.
        self.overflowed = False
        # What the owners of per-connection state registered to forget it (see ``on_close``).
        self._cleanups: list[Callable[[Connection], Any]] = []

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
        self.overflowed = True
        if self._sender is not None:
            self._sender.cancel()
        self.cancel_expiry()
        transport = self.transport
        if transport is None:  # already gone
            return
        transport.write(close_frame(*self._closing))
        transport.close()  # flushes what is buffered, then closes
        asyncio.get_running_loop().call_later(SLOW_CONSUMER_GRACE, _abort_if_stalled, transport)

    # -- requests -----------------------------------------------------------------------------
    @property
    def requests_in_flight(self) -> int:
        return len(self._requests) if self._requests else 0

    def start_request(self, coro: Coroutine[Any, Any, None], *, barrier: bool) -> None:
        """Run ``coro`` (one request) for this connection, concurrently with the others.

        It starts at once, in the caller, and becomes a task only if it has to wait (so a
        request that completes without waiting costs no task), unless the last ``barrier``
        request is still running: then it starts as a task once that one is done. A
        ``barrier`` request that has to wait becomes the one later requests wait for.
        """
        after = self._barrier
        if after is not None and after.done():
            after = self._barrier = None
        if after is not None:
            task = asyncio.get_running_loop().create_task(_after(after, coro))
        else:
            # The whole request runs in one context of its own, as a task's would.
            context = contextvars.copy_context()
            try:
                waiting_on = context.run(coro.send, None)
            except StopIteration:
                return  # done without waiting
            task = asyncio.get_running_loop().create_task(
                _resume(coro, waiting_on), context=context
            )
        if self._requests is None:
            self._requests = set()
        self._requests.add(task)
        task.add_done_callback(self._request_finished)
        if barrier:
            self._barrier = task

    def _request_finished(self, task: asyncio.Task) -> None:
        if self._requests is not None:
            self._requests.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the runner catches all
            log.error("request task failed", exc_info=task.exception())

    async def request_done(self) -> None:
        """Wait until one of the requests in flight is done."""
        if self._requests:
            await asyncio.wait(set(self._requests), return_when=asyncio.FIRST_COMPLETED)

    async def _finish_requests(self) -> None:
        """Let requests in flight end (a write finishes; its reply has nowhere to go), for at
        most CLOSE_TIMEOUT, then cancel the rest."""
        if not self._requests:
            return
        _, pending = await asyncio.wait(set(self._requests), timeout=CLOSE_TIMEOUT)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

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
        """Stop the sender, end the requests in flight and wait for a close in progress (called
        when the handler ends)."""
        self.cancel_expiry()
        await self._finish_requests()
        sender = self._sender
        if sender is not None:
            sender.cancel()
        if self._close_task is not None:
            await asyncio.gather(self._close_task, return_exceptions=True)
        if sender is not None:
            await asyncio.gather(sender, return_exceptions=True)

    # -- per-connection state -----------------------------------------------------------------
    def on_close(self, cleanup: Callable[[Connection], Any]) -> None:
        """Have ``cleanup(self)`` run when this connection ends: each owner of per-connection
        state (the registry, the resumer, the channels, the open connections) registers it when
        it adds some. Registering the same cleanup again (an equal bound method) is a no-op until
        it has run; one registered after a run waits for the next (``run_cleanups``)."""
        if cleanup not in self._cleanups:
            self._cleanups.append(cleanup)

    def run_cleanups(self) -> None:
        """Run the cleanups registered so far, in order, each isolated (one that raises is
        logged with an error id and the others run). The session runs them when the socket
        closes and again once its requests in flight are done (what they added meanwhile)."""
        cleanups, self._cleanups = self._cleanups, []
        for cleanup in cleanups:
            try:
                cleanup(self)
            except Exception:
                log.exception("connection clean-up failed", error_id=secrets.token_hex(8))

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
