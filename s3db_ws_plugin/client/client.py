"""The async Python client for WebSocket protocol v1 (SPEC 4.1): requests, subscriptions,
reconnect with resubscribe, and token refresh.

    async with Client("ws://127.0.0.1:3001/", token=get_token) as client:
        note = await client.insert("notes", {"title": "hi"})
        async with client.subscribe("notes", filter={"roomId": "r1"}) as sub:
            async for event in sub:
                print(event.event, event.data)

Every request waits for the reply carrying its ``requestId`` and returns what the user wants
from it (a record, a ``Page``, a user), or raises the ``ClientError`` subclass of the server's
error code. The client owns one socket at a time; when it drops unexpectedly (server restart,
1001, slow-consumer 4408, a network error) the client reconnects with exponential backoff and
jitter, authenticates again (calling the token callable again), resubscribes every live
subscription and keeps their iterators going. Each subscription remembers the stream position
of the last event it got and resubscribes ``since`` it, so events written while it was
disconnected are replayed, in order, once. When the server cannot replay them (its history was
lost or is too short), the iterator yields an ``Event`` whose ``event`` is ``"reload"`` (and
calls the subscription's ``on_reload``): reload what you show, for instance with ``list``, then
keep iterating. Requests in flight when
the socket drops fail with ``ConnectionLost``; new ones wait for the reconnect up to
``request_timeout``. A 4401 close (invalid or expired token) reconnects with a fresh token when
``token`` is a callable, and is final otherwise: requests and iterators raise ``Unauthorized``.

When ``token`` is a callable and the current token is a JWT with ``exp``, the client sends an
``auth`` frame with a fresh token shortly before it expires, so the connection stays open.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import itertools
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from s3db_core import await_me_maybe
from s3db_core.log import get_logger
from s3db_core.options import positive_int
from s3db_core.query import matches
from s3db_core.redact import redact

from ..internals import client_transport, limit_read_size
from ..protocol import CloseCode
from .channel import Channel, JoinCall
from .errors import ClientError, ConnectionLost, RequestTimeout, Unauthorized, error_from_frame
from .subscription import (
    EVENT_KINDS,
    RELOAD,
    Event,
    Page,
    Position,
    Stream,
    SubscribeCall,
    Subscription,
)

log = get_logger("s3db.client")

# Credentials a URL may carry (``?token=``, ``?apiKey=``, user:password@).
_URL_CREDENTIALS = re.compile(r"[?&](token|apiKey|api_key)=|//[^/]*@")

TokenSource = str | Callable[[], "str | Awaitable[str]"] | None
# Close codes after which reconnecting cannot help.
_FINAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1010})
UNAUTHORIZED_CLOSE = CloseCode.UNAUTHORIZED


# -- helpers -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``initial * factor**attempt`` capped at ``maximum``, with jitter
    (the delay is drawn uniformly from ``[(1 - jitter) * d, d]``)."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int) -> float:
        ceiling = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return ceiling * (1 - self.jitter * random.random())


def jwt_expiry(token: str | None) -> float | None:
    """The ``exp`` claim of a JWT (payload decoded without verification), else None."""
    if not token or token.count(".") != 2:
        return None
    payload = token.split(".")[1]
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def refresh_delay(expires_at: float, now: float, margin: float) -> float:
    """Seconds until a token expiring at ``expires_at`` should be refreshed: ``margin``
    seconds before expiry, or at 80% of the remaining lifetime when that is later (short
    tokens)."""
    remaining = expires_at - now
    return max(0.0, remaining - min(margin, remaining * 0.2))


# -- the client --------------------------------------------------------------------------------
class _Pending:
    """A request waiting for its reply: the future the reader resolves, the callback run on
    the reply (in the reader), the loop time it fails with ``RequestTimeout`` and its type."""

    __slots__ = ("future", "on_reply", "deadline", "kind")

    def __init__(
        self,
        future: asyncio.Future,
        on_reply: Callable[[dict], None] | None,
        deadline: float,
        kind: Any,
    ) -> None:
        self.future = future
        self.on_reply = on_reply
        self.deadline = deadline
        self.kind = kind


class Client:
    """An async client for an s3db WebSocket server. See the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        token: TokenSource = None,
        api_key: str | None = None,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        request_timeout: float = 10.0,
        refresh_margin: float = 30.0,
        heartbeat: float | None = 30.0,
        max_message_size: int = 16 << 20,
        on_reconnect: Callable[[Client], Any] | None = None,
        max_pending: int = 10_000,
    ) -> None:
        self.url = url
        self.max_pending = positive_int("max_pending", max_pending)
        # The address as logs show it: user-info, credential parameters and this client's own
        # credentials masked (s3db_core.redact, the one redactor of every log line).
        self.safe_url = redact(url, (api_key, token if isinstance(token, str) else None))
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.request_timeout = request_timeout
        self.refresh_margin = refresh_margin
        self.heartbeat = heartbeat
        self.max_message_size = max_message_size
        self.on_reconnect = on_reconnect
        self.client_id: str | None = None
        self.user: dict[str, Any] | None = None
        self.reconnects = 0
        # The close code of the last socket the server closed (1001, 4401, 4408...), or None.
        self.close_code: int | None = None
        self._token = token
        self._api_key = api_key
        self._current_token: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._streams: dict[tuple[str, bytes], Stream] = {}
        self._channels: dict[str, Channel] = {}  # joined channels, rejoined after a reconnect
        self._ready = asyncio.Event()
        self._closed = False
        self._failure: ClientError | None = None
        self._runner: asyncio.Task | None = None
        self._refresher: asyncio.Task | None = None
        # One timer for every request's deadline (not one per request): armed for the earliest
        # deadline in ``_pending``, it fails the late ones with RequestTimeout and re-arms.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed" if self._closed else "disconnected"
        return f"<Client {self.safe_url} {state}>"

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    # -- lifecycle ------------------------------------------------------------------------
    async def connect(self) -> Client:
        """Open the socket and authenticate; raises ``Unauthorized``, ``ConnectionLost``..."""
        if self._runner is not None:
            return self
        if self._closed:
            raise ConnectionLost("the client is closed")
        self._session = aiohttp.ClientSession()
        try:
            ws = await self._open()
        except BaseException:
            await self._session.close()
            self._session = None
            raise
        self._ready.set()
        self._runner = asyncio.create_task(self._run(ws), name=f"s3db-client {self.safe_url}")
        return self

    async def close(self) -> None:
        """Close the socket (1000), end every subscription's iterator, fail pending requests."""
        if self._closed:
            return
        self._closed = True
        self._ready.clear()
        self._stop_refresh()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
        self._fail_pending(ConnectionLost("the client was closed"))
        for stream in self._streams.values():
            stream.end()
        self._streams.clear()
        for channel in self._channels.values():
            channel.end()
        self._channels.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests -------------------------------------------------------------------------
    async def ping(self) -> int:
        """Round trip to the server; returns the server's clock (epoch ms)."""
        reply = await self._request({"type": "ping"})
        return reply["timestamp"]

    async def auth(self, token: str) -> dict[str, Any]:
        """Refresh the connection's token (same user); returns the user. A static ``token``
        given to the client is replaced, so reconnects use this one."""
        reply = await self._request({"type": "auth", "token": token})
        self._current_token = token
        if not callable(self._token):
            self._token = token
        self.user = reply.get("user")
        self._schedule_refresh()
        return reply.get("user") or {}

    async def get(self, resource: str, id: str) -> dict[str, Any]:
        reply = await self._request({"type": "get", "resource": resource, "id": id})
        return reply["data"]

    async def list(
        self,
        resource: str,
        filter: Mapping[str, Any] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        order: str | None = None,
    ) -> Page:
        """One page of records: ``items, cursor = await client.list("notes", limit=50)``."""
        frame: dict[str, Any] = {"type": "list", "resource": resource}
        for key, value in (
            ("filter", filter),
            ("limit", limit),
            ("cursor", cursor),
            ("order", order),
        ):
            if value is not None:
                frame[key] = dict(value) if isinstance(value, Mapping) else value
        reply = await self._request(frame)
        return Page(reply["data"], reply.get("cursor"))

    async def insert(self, resource: str, data: Mapping[str, Any]) -> dict[str, Any]:
        reply = await self._request({"type": "insert", "resource": resource, "data": dict(data)})
        return reply["data"]

    async def update(self, resource: str, id: str, data: Mapping[str, Any]) -> dict[str, Any]:
        frame = {"type": "update", "resource": resource, "id": id, "data": dict(data)}
        return (await self._request(frame))["data"]

    async def delete(self, resource: str, id: str) -> dict[str, Any]:
        """Delete a record; returns the deleted record (as much of it as the user may see)."""
        reply = await self._request({"type": "delete", "resource": resource, "id": id})
        return reply.get("data") or {"id": reply.get("id", id)}

    def subscribe(
        self,
        resource: str,
        filter: Mapping[str, Any] | None = None,
        events: Iterable[str] | None = None,
        max_pending: int | None = None,
        *,
        since: Position | Mapping[str, Any] | None = None,
        snapshot: bool = False,
        limit: int | None = None,
        on_reload: Callable[[Subscription], Any] | None = None,
    ) -> SubscribeCall:
        """Subscribe to changes: ``sub = await client.subscribe(...)`` or
        ``async with client.subscribe(...) as sub``; then ``async for event in sub``.

        ``since`` (a ``Position``, e.g. a ``sub.position`` saved earlier) replays what happened
        after it first; ``snapshot=True`` puts the first ``limit`` matching records in
        ``sub.snapshot`` (next page: ``sub.cursor``) and streams every change after them, none
        missed or repeated. When a replay is impossible the iterator yields a ``reload`` event
        and ``on_reload(sub)`` is called. At most ``max_pending`` (default: the client's)
        unread events are kept; one more ends the iterator with ``SlowConsumer`` once the
        buffered ones are read."""
        kinds = None if events is None else tuple(k for k in EVENT_KINDS if k in set(events))
        pending = self.max_pending if max_pending is None else positive_int("max_pending", max_pending)
        start = None
        if since is not None:
            start = Position.from_value(since)
            if start is None:
                raise ValueError("since must be a Position or {offset: int, epoch: str}")
            if snapshot:
                raise ValueError("since and snapshot cannot be combined")
        sub = Subscription(
            self, resource, dict(filter) if filter else None, kinds, pending, on_reload
        )
        extra: dict[str, Any] = {}
        if start is not None:
            extra["since"] = start.to_dict()
        if snapshot:
            extra["snapshot"] = True
            if limit is not None:
                extra["limit"] = limit
        return SubscribeCall(self._subscribe(sub, extra))

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send any frame with a fresh ``requestId``; return its reply or raise its error."""
        return await self._request(frame)

    # -- channels ---------------------------------------------------------------------------
    def join(
        self,
        channel: str,
        info: Mapping[str, Any] | None = None,
        *,
        receive_own: bool = False,
        max_pending: int | None = None,
    ) -> JoinCall:
        """Join a channel: ``room = await client.join(...)`` or ``async with client.join(...)
        as room`` (leaves at the end). ``info`` is this member's presence data (an object of
        at most 1 KiB); ``receive_own`` asks for this client's own messages too. The client
        joins again after a reconnect."""
        pending = self.max_pending if max_pending is None else max_pending
        if pending < 1:
            raise ValueError("max_pending must be at least 1")
        return JoinCall(self._join(Channel(self, channel, info, receive_own, pending)))

    async def _join(self, channel: Channel) -> Channel:
        if channel.name in self._channels:
            raise ValueError(f"this client has already joined {channel.name!r}")
        self._channels[channel.name] = channel  # before the request: events may follow the reply
        try:
            await self._request(
                channel.frame(), on_reply=lambda reply: channel.joined(reply, again=False)
            )
        except BaseException:
            if self._channels.get(channel.name) is channel:
                del self._channels[channel.name]
            raise
        return channel

    async def leave_channel(self, channel: Channel) -> None:
        """Leave ``channel`` (what ``Channel.leave`` calls)."""
        if self._channels.get(channel.name) is not channel:
            return
        del self._channels[channel.name]
        if self.connected:
            with contextlib.suppress(ClientError):
                await self._request({"type": "leave", "channel": channel.name})

    async def _rejoin(self) -> None:
        for name, channel in list(self._channels.items()):
            try:
                await self._request(
                    channel.frame(),
                    wait_ready=False,
                    on_reply=functools.partial(channel.joined, again=True),
                )
            except (ConnectionLost, RequestTimeout):
                raise
            except ClientError as exc:
                log.warning("rejoin refused", channel=name, code=exc.code)
                channel.end(exc)
                self._channels.pop(name, None)

    # -- internals: requests ---------------------------------------------------------------
    async def _request(
        self,
        frame: dict[str, Any],
        *,
        wait_ready: bool = True,
        on_reply: Callable[[dict], None] | None = None,
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        if wait_ready and not self._ready.is_set():
            await self._wait_ready(deadline)
        ws = self._ws
        if ws is None or ws.closed:
            raise self._failure or ConnectionLost("not connected")
        rid = next(self._ids)
        future = loop.create_future()
        self._pending[rid] = _Pending(future, on_reply, deadline, frame.get("type"))
        if self._timer is None or deadline < self._timer_at or self._timer_loop is not loop:
            self._arm(loop, deadline)
        try:
            await ws.send_str(orjson.dumps({**frame, "requestId": rid}).decode())
            # The reader resolves the future with the reply (or its error), ``_expire`` fails
            # it with RequestTimeout at the deadline, ``_fail_pending`` with ConnectionLost.
            return await future
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise ConnectionLost(f"connection lost: {exc}", request_id=rid) from None
        finally:
            self._pending.pop(rid, None)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer_loop = loop
        self._timer = loop.call_at(when, self._expire)

    def _disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _expire(self) -> None:
        """The request timer fired: fail every request past its deadline with RequestTimeout
        (as a per-request timeout would have) and re-arm for the earliest deadline left."""
        loop, self._timer = self._timer_loop, None
        assert loop is not None
        # A timer may run a clock tick early: what it was armed for is due.
        now = max(loop.time(), self._timer_at)
        earliest: float | None = None
        for rid, entry in list(self._pending.items()):
            if entry.deadline <= now:
                del self._pending[rid]  # a late reply finds no request (as after a timeout)
                if not entry.future.done():
                    entry.future.set_exception(
                        RequestTimeout(
                            f"no reply to {entry.kind!r} within {self.request_timeout:g} s",
                            request_id=rid,
                        )
                    )
            elif earliest is None or entry.deadline < earliest:
                earliest = entry.deadline
        if earliest is not None:
            self._arm(loop, earliest)

    async def _wait_ready(self, deadline: float) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed or self._runner is None:
            raise ConnectionLost("not connected")
        waiter = asyncio.ensure_future(self._ready.wait())
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.wait({waiter, self._runner}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise ConnectionLost(f"not reconnected within {self.request_timeout:g} s") from None
        finally:
            waiter.cancel()
        if not self._ready.is_set():
            raise self._failure or ConnectionLost("the client was closed")

    def _fail_pending(self, error: ClientError) -> None:
        pending, self._pending = self._pending, {}
        self._disarm()  # no request left to time out
        for rid, entry in pending.items():
            if not entry.future.done():
                entry.future.set_exception(
                    type(error)(error.message, code=error.code, request_id=rid, frame=error.frame)
                )

    # -- internals: subscriptions ----------------------------------------------------------
    @staticmethod
    def _key(resource: str, filter: dict[str, Any]) -> tuple[str, bytes]:
        return resource, orjson.dumps(filter, option=orjson.OPT_SORT_KEYS)

    async def _subscribe(self, sub: Subscription, extra: dict[str, Any]) -> Subscription:
        key = self._key(sub.resource, sub.filter)
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = Stream(sub.resource, sub.filter)
        elif "since" in extra:  # a stream already flowing: it continues where it is
            del extra["since"]
        stream.attach(sub)  # before the request: events may follow the reply at once
        try:
            reply = await self._request(
                {**stream.frame(resume=False), **extra}, on_reply=self._subscribed(stream)
            )
        except BaseException:
            self._drop(key, stream, sub)
            raise
        sub.effective_filter = dict(reply.get("filter") or {})
        if "snapshot" in extra:
            data = reply.get("data")
            sub.snapshot = list(data) if isinstance(data, list) else []
            sub.cursor = reply.get("cursor")
        return sub

    def _subscribed(self, stream: Stream) -> Callable[[dict], None]:
        def on_reply(reply: dict) -> None:  # runs in the reader, before any later frame
            stream.effective = dict(reply.get("filter") or {})
            events = reply.get("events")
            for sub in stream.subs:
                sub.effective_filter = dict(stream.effective)
                if isinstance(events, list):
                    sub.effective_events = tuple(
                        k for k in EVENT_KINDS if k in events and sub.wants(k)
                    )
            self._positioned(stream, reply)

        return on_reply

    def _positioned(self, stream: Stream, reply: dict[str, Any]) -> None:
        """Take the ``subscribed`` reply's position (and ``recovered``) for ``stream``."""
        position = Position.from_value(reply.get("position"))
        recovered = reply.get("recovered")
        stream.live = True
        if isinstance(recovered, bool):
            for sub in stream.subs:
                sub.recovered = recovered
        if recovered is False:
            stream.position = position
            stream.versions.clear()
            log.info("subscription not recovered: reload", resource=stream.resource)
            reload = Event(
                stream.resource,
                RELOAD,
                {},
                int(time.time() * 1000),
                offset=position.offset if position else None,
                epoch=position.epoch if position else None,
            )
            stream.reload(reload)
            return
        current = stream.position
        if position is not None and (
            current is None or current.epoch != position.epoch or current.offset < position.offset
        ):
            stream.position = position

    def _drop(self, key: tuple[str, bytes], stream: Stream, sub: Subscription) -> None:
        if sub in stream.subs:
            stream.subs.remove(sub)
        if not stream.subs and self._streams.get(key) is stream:
            del self._streams[key]

    async def release(self, sub: Subscription) -> None:
        key = self._key(sub.resource, sub.filter)
        stream = self._streams.get(key)
        if stream is None:
            return
        self._drop(key, stream, sub)
        if key in self._streams or not self.connected:
            return
        frame = {"type": "unsubscribe", "resource": sub.resource, "filter": sub.filter}
        with contextlib.suppress(ClientError):
            await self._request(frame)

    def _dispatch(self, frame: dict[str, Any]) -> None:
        """Hand a pushed event to the subscriptions it belongs to.

        The server sends one frame per change even when several subscriptions match, so the
        client matches the record against each stream's effective filter. An update that moved
        a record out of every filter (or a filter on a field the user may not see) matches
        none: it then goes to every subscription of that resource that wants its kind.
        """
        resource, kind = frame.get("resource"), frame.get("event")
        if not isinstance(resource, str) or not isinstance(kind, str):
            return  # not an event this client can route
        data = frame["data"] if isinstance(frame.get("data"), dict) else {}
        version, offset, epoch = frame.get("version"), frame.get("offset"), frame.get("epoch")
        event = Event(
            resource,
            kind,
            data,
            frame.get("timestamp") or 0,
            version if isinstance(version, int) and not isinstance(version, bool) else 0,
            offset if isinstance(offset, int) and not isinstance(offset, bool) else None,
            epoch if isinstance(epoch, str) else None,
        )
        wanted: list[tuple[Stream, list[Subscription]]] = []
        for stream in self._streams.values():
            if stream.resource != resource:
                continue
            if not stream.live and stream.position is not None:
                continue  # waiting to resubscribe since its position: its replay brings this
            # Resuming may repeat a change for a stream that already has it: drop it there.
            fresh = stream.fresh(event)
            if not stream.advance(event):  # a new epoch under a live stream: changes were lost
                lost = Event(resource, RELOAD, {}, event.timestamp, 0, event.offset, event.epoch)
                stream.reload(lost)
            if fresh:
                subs = [s for s in stream.subs if s.wants(kind)]
                if subs:
                    wanted.append((stream, subs))
        # A leave carries only the id: every subscription of the resource may have shown it.
        matched = [] if kind == "leave" else [
            (stream, subs) for stream, subs in wanted if _matches(data, stream.effective)
        ]
        for stream, subs in matched or wanted:
            stream.push(event, subs)

    def _revoked(self, error: ClientError) -> None:
        """The server revoked a subscription (``details.revoked``): its iterators raise."""
        details = error.details
        if not (isinstance(details, dict) and details.get("revoked")):
            return
        filter = details["filter"] if isinstance(details.get("filter"), dict) else {}
        stream = self._streams.pop(self._key(str(details.get("resource")), filter), None)
        if stream is not None:
            stream.end(error)

    async def _resubscribe(self) -> None:
        for key, stream in list(self._streams.items()):
            if not stream.subs:
                continue
            try:
                await self._request(
                    stream.frame(), wait_ready=False, on_reply=self._subscribed(stream)
                )
            except (ConnectionLost, RequestTimeout):
                raise
            except ClientError as exc:
                log.warning("resubscribe refused", resource=stream.resource, code=exc.code)
                stream.end(exc)
                self._streams.pop(key, None)

    # -- internals: the socket -------------------------------------------------------------
    async def _get_token(self) -> str | None:
        token: Any = self._token
        if callable(token):
            token = await await_me_maybe(token())
        if token is not None and not isinstance(token, str):
            raise TypeError("the token callable must return a string")
        return token

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
        """Connect, authenticate from the upgrade request, wait for ``connected``."""
        assert self._session is not None
        token = await self._get_token()
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self._api_key:
            headers["x-api-key"] = self._api_key
        given = bool(headers) or bool(_URL_CREDENTIALS.search(self.url))
        try:
            async with asyncio.timeout(self.request_timeout):
                ws = await self._session.ws_connect(
                    self.url,
                    headers=headers,
                    heartbeat=self.heartbeat,
                    max_msg_size=self.max_message_size,
                    autoclose=True,
                )
                try:
                    frame = await self._handshake(ws, given)
                except BaseException:
                    await ws.close()
                    raise
        except TimeoutError:
            raise ConnectionLost(
                f"no answer from {self.safe_url} within {self.request_timeout:g} s"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionLost(
                f"cannot connect to {self.safe_url}: {exc.__class__.__name__}"
            ) from None
        # Small reads, as the server does (aiohttp keeps the transport on its private writer).
        limit_read_size(client_transport(ws))
        self._ws = ws
        self._current_token = token
        self.client_id = frame.get("clientId")
        self.user = frame.get("user")
        self._schedule_refresh()
        log.debug("connected", url=self.safe_url, client_id=self.client_id)
        return ws

    async def _handshake(
        self, ws: aiohttp.ClientWebSocketResponse, credentials_given: bool
    ) -> dict[str, Any]:
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT or msg.type is aiohttp.WSMsgType.BINARY:
                frame = orjson.loads(msg.data)
                if frame.get("type") == "connected":
                    return frame
                if frame.get("type") == "auth_required":  # sent when the upgrade had none
                    raise Unauthorized(
                        "this server requires a token (or an API key) and "
                        + ("it did not accept the one given" if credentials_given else "none was given")
                    )
                if frame.get("type") == "error":
                    raise error_from_frame(frame)
                continue
            if ws.close_code == UNAUTHORIZED_CLOSE:
                raise Unauthorized(str(msg.extra or "unauthorized"))
            raise ConnectionLost(f"closed during the handshake ({ws.close_code})")

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> ClientError | None:
        """Read frames until the socket closes; the error the close means (None: reconnect)."""
        last_error: ClientError | None = None
        text, binary = aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY
        while True:
            # ``receive`` rather than ``async for``: one coroutine less per frame; a close (or
            # an error) ends the loop either way.
            msg = await ws.receive()
            if msg.type is not text and msg.type is not binary:
                break
            try:
                frame = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                log.warning("ignoring a frame that is not JSON")
                continue
            if not isinstance(frame, dict):
                continue
            kind = frame.get("type")
            if kind == "event":
                if "channel" in frame:
                    joined = self._channels.get(frame["channel"])
                    if joined is not None:
                        joined.dispatch(frame)
                else:
                    self._dispatch(frame)
                continue
            if kind == "error" and frame.get("code") == Unauthorized.code:
                last_error = error_from_frame(frame)  # a 4401 close follows
            entry = (
                self._pending.pop(frame["requestId"], None) if "requestId" in frame else None
            )
            if entry is not None:
                if kind == "error":
                    if not entry.future.done():
                        entry.future.set_exception(error_from_frame(frame))
                else:
                    if entry.on_reply is not None:
                        entry.on_reply(frame)
                    if not entry.future.done():
                        entry.future.set_result(frame)
            elif kind == "error":
                last_error = error_from_frame(frame)
                log.info("server error", code=last_error.code, message=last_error.message)
                self._revoked(last_error)
            elif kind == "connected":
                self.client_id = frame.get("clientId", self.client_id)
                self.user = frame.get("user")
        code = ws.close_code
        if code == UNAUTHORIZED_CLOSE:
            if isinstance(last_error, Unauthorized):
                return last_error
            return Unauthorized("unauthorized (close 4401)")
        if code in _FINAL_CLOSE_CODES:
            return ConnectionLost(f"closed by the server ({code})")
        return None

    async def _run(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Own the socket: read it, and reconnect + resubscribe when it drops."""
        first = True
        try:
            while True:
                reader = asyncio.create_task(self._read(ws))
                if not first:
                    try:
                        await self._resubscribe()
                        await self._rejoin()
                    except (ConnectionLost, RequestTimeout):
                        await ws.close()  # dropped again or stuck: the reader ends, reconnect
                    else:
                        self._ready.set()
                        await self._notify_reconnect()
                first = False
                error = await reader
                self._ready.clear()
                for stream in self._streams.values():
                    stream.live = False  # resubscribed on the next socket, since its position
                self._stop_refresh()
                close_code = self.close_code = ws.close_code
                log.info("disconnected", url=self.safe_url, close_code=close_code)
                final = self._final(error)
                if final is not None:
                    self._fail(final)
                    return
                self._fail_pending(ConnectionLost(f"connection lost (close {close_code})"))
                ws = await self._reconnect()
        except ClientError as exc:
            self._fail(exc)

    def _final(self, error: ClientError | None) -> ClientError | None:
        """The error that ends the client after a close, or None to reconnect."""
        if not self.reconnect:
            return error or ConnectionLost("connection lost")
        if isinstance(error, Unauthorized):
            return None if callable(self._token) else error
        return error

    async def _reconnect(self) -> aiohttp.ClientWebSocketResponse:
        attempt = 0
        while True:
            delay = self.backoff.delay(attempt)
            log.info("reconnecting", url=self.safe_url, attempt=attempt + 1, delay=round(delay, 3))
            await asyncio.sleep(delay)
            try:
                ws = await self._open()
            except Unauthorized:
                if not callable(self._token):
                    raise
            except ConnectionLost as exc:
                log.debug("reconnect failed", error=exc.message)
            except Exception as exc:  # the token callable failed
                log.warning("reconnect failed", error=exc.__class__.__name__)
            else:
                self.reconnects += 1
                return ws
            attempt += 1

    async def _notify_reconnect(self) -> None:
        if self.on_reconnect is None:
            return
        try:
            await await_me_maybe(self.on_reconnect(self))
        except Exception:
            log.exception("on_reconnect callback failed")

    def _fail(self, error: ClientError) -> None:
        """Make ``error`` final: pending requests, iterators and new requests raise it."""
        log.warning("connection closed for good", url=self.safe_url, code=error.code)
        self._failure = error
        self._ready.clear()
        self._fail_pending(error)
        for stream in self._streams.values():
            stream.end(error)
        self._streams.clear()
        for channel in self._channels.values():
            channel.end(error)
        self._channels.clear()

    # -- internals: token refresh -----------------------------------------------------------
    def _schedule_refresh(self) -> None:
        self._stop_refresh()
        if not callable(self._token):
            return
        expires_at = jwt_expiry(self._current_token)
        if expires_at is None:
            return
        delay = refresh_delay(expires_at, time.time(), self.refresh_margin)
        self._refresher = asyncio.get_running_loop().create_task(self._refresh(delay))

    def _stop_refresh(self) -> None:
        task, self._refresher = self._refresher, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _refresh(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            token = await self._get_token()
            if token is None:
                return
            reply = await self._request({"type": "auth", "token": token}, wait_ready=False)
        except Exception as exc:  # the server closes at exp; the reconnect fetches a new token
            log.warning("token refresh failed", error=getattr(exc, "code", exc.__class__.__name__))
            return
        self._current_token = token
        self.user = reply.get("user", self.user)
        log.debug("token refreshed")
        self._schedule_refresh()


def _matches(record: dict[str, Any], filter: dict[str, Any]) -> bool:
    if not filter:
        return True
    try:
        return matches(record, filter)
    except Exception:  # a filter the local matcher cannot read: let the fallback decide
        return False
