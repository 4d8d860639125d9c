"""``WebSocketPlugin``: the aiohttp server, the connection lifecycle and the change fan-out.

It is an ordinary pluggy plugin of the ``s3db`` project: ``s3db_startup`` starts the server,
``s3db_shutdown`` closes every socket with 1001 and stops it, ``s3db_change`` fans a durable
change out to the connections allowed to see it. The core knows nothing about it.

    ws = WebSocketPlugin(port=3001, resources={"messages": True})
    await db.use_plugin(ws)
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeGuard

import structlog
from aiohttp import WSMsgType, web

from s3db_auth_drivers import Credentials
from s3db_core import Change, Database, Position, await_me_maybe, hookimpl
from s3db_core.log import get_logger
from s3db_core.options import optional_positive_float, positive_float, positive_int
from s3db_core.plugins import call_each_isolated

from . import hookspecs
from .auth import SessionAuth
from .budgets import (
    DEFAULT_MAX_FILTER_BYTES_PER_IP,
    DEFAULT_MAX_FILTER_BYTES_PER_USER,
    DEFAULT_MAX_SUBSCRIPTIONS_PER_IP,
    DEFAULT_MAX_SUBSCRIPTIONS_PER_USER,
    Holdings,
    RedisHoldings,
)
from .channels import DEFAULT_MAX_CHANNELS_PER_CONNECTION, DEFAULT_PRESENCE_TIMEOUT, Channels
from .connection import (
    CLOSE_TIMEOUT,
    Connection,
    PerIpLimits,
    TrustedProxies,
    client_address,
    text_frame,
)
from .guards import ResourcePolicy
from .handlers import Handlers
from .internals import structlog_var
from .limits import (
    DEFAULT_LIST_MAX_BYTES,
    DEFAULT_LIST_SCAN_LIMIT,
    DEFAULT_MAX_FRAME_VALUES,
    DEFAULT_MAX_SUBSCRIPTIONS,
    FilterLimits,
    check_frame,
    clip,
    recover_request_id,
)
from .metrics import Metrics
from .protocol import (
    CloseCode,
    ErrorCode,
    ProtocolError,
    client_error,
    decode,
    encode,
    error_frame,
    parse,
    request_id_of,
)
from .rate_limiters import RateDecision, load_rate_limiter
from .recheck import recheck_subscriptions
from .resume import DEFAULT_REPLAY_MAX_BYTES, Resumer, event_frame
from .subscriptions import SubscriptionRegistry
from .workers import WorkerSettings

log = get_logger("s3db.ws")


_REQUEST_ID = structlog_var("request_id")
_DATA_FRAMES = (WSMsgType.TEXT, WSMsgType.BINARY)

RATE_LIMIT_KEYS = ("connection", "user", "ip")
CLIENT_JS = Path(__file__).parent / "static" / "client.js"
# The JavaScript-style (camelCase) spellings ``WebSocketPlugin.from_seed`` accepts, and the
# keyword argument each stands for.
SEED_KEYWORDS = {
    "rateLimit": "rate_limit",
    "heartbeatInterval": "heartbeat_interval",
    "maxMessageSize": "max_message_size",
    "maxQueueBytes": "max_queue_bytes",
    "authTimeout": "auth_timeout",
    "headerTimeout": "header_timeout",
    "maxConnectionsPerIp": "max_connections_per_ip",
    "maxUnauthenticatedPerIp": "max_unauthenticated_per_ip",
    "maxConcurrentRequests": "max_concurrent_requests",
    "trustedProxies": "trusted_proxies",
    "proxyHeader": "proxy_header",
}
# Frames answered by the reader itself, at once (never behind a slow request).
_INLINE = frozenset({"ping"})
# Frames that change what the session is (who, which subscriptions): every later frame of the
# connection starts only once such a frame is done (a `list` after a `subscribe` sees the
# subscription in place, so no change falls between the history and the live stream).
_BARRIERS = frozenset({"auth", "subscribe", "unsubscribe", "join", "leave"})


def _metrics_token(metrics: bool | Mapping[str, Any]) -> str | None:
    """The bearer token ``/metrics`` requires (``metrics={"token": ...}``), or None."""
    if isinstance(metrics, bool):
        return None
    if not isinstance(metrics, Mapping) or set(metrics) - {"token"}:
        raise ValueError("metrics must be True, False or {'token': '...'}")
    token = metrics.get("token")
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError("metrics token must be a non-empty string")
    return token


def _is_page_route(route: web.AbstractRouteDef, path: str) -> TypeGuard[web.RouteDef]:
    """A GET route at the socket's path: it serves that path's plain HTTP GETs (see ``routes``)."""
    return isinstance(route, web.RouteDef) and route.method == "GET" and route.path == path


class RateLimit:
    """The frame rate limiter and what it is keyed by.

    ``key`` is ``"user"`` (the default: an authenticated connection counts against its user,
    any other against its IP address, so neither reconnecting nor opening parallel sockets
    resets the budget), ``"ip"``, ``"connection"``, or a list of them (``["user", "ip"]``): a
    frame must then be allowed under every key.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        key = config.get("key", "user")
        keys = [key] if isinstance(key, str) else key
        if (
            not isinstance(keys, list | tuple)
            or not keys
            or not all(isinstance(k, str) and k in RATE_LIMIT_KEYS for k in keys)
        ):
            raise ValueError(f"rate_limit 'key' must be one of {RATE_LIMIT_KEYS} or a list of them")
        self.keys: tuple[str, ...] = tuple(dict.fromkeys(keys))
        name = config.get("limiter", "memory")
        options = {k: v for k, v in config.items() if k not in ("enabled", "key", "limiter")}
        self.limiter = load_rate_limiter(name, options)

    def keys_for(self, conn: Connection) -> list[str]:
        keys = []
        for kind in self.keys:
            if kind == "connection":
                keys.append(f"conn:{conn.client_id}")
            elif kind == "user" and conn.user is not None:
                keys.append(f"user:{conn.user.id}")
            else:  # "ip", and "user" before (or without) authentication
                keys.append(f"ip:{conn.remote}")
        return list(dict.fromkeys(keys))

    async def hit(self, conn: Connection) -> RateDecision:
        """Count one frame of ``conn``; refused when any of its keys is over the limit."""
        decision = None
        for key in self.keys_for(conn):
            decision = await self.limiter.hit(key)
            if not decision.allowed:
                return decision
        assert decision is not None
        return decision


class WebSocketPlugin:
    """Serves the resources named in ``resources`` over WebSocket protocol v1 (docs/protocol.md).

    ``auth``: ``{"required": bool, "drivers": [{"driver": name, "config": {...}}]}`` (drivers
    from the ``s3db.auth_drivers`` group; ``required`` defaults to True when drivers are given).
    ``resources``: ``{name: True | {"events", "protected", "auth", "guard"}}``.
    ``rate_limit``: ``{"enabled", "max_requests", "window_ms", "strategy", "key":
    user (default)|ip|connection or a list of them, "limiter": name}`` (camelCase keys
    accepted; see ``RateLimit``). ``port=0`` binds a free
    port, readable as ``plugin.port`` once started. ``routes`` are extra aiohttp routes served
    on the same port; a GET route at the socket's own ``path`` answers plain GETs there (an
    app's page at ``/``) while WebSocket upgrades still reach the socket. ``WebSocketPlugin.from_seed(rateLimit=..., ...)``
    takes the keyword names spelled the JavaScript way (``SEED_KEYWORDS``).
    Behind a reverse proxy, ``trusted_proxies`` (addresses/networks) and ``proxy_header``
    (``X-Forwarded-For`` or ``Forwarded``) make the address the proxy forwards the client's
    (``client_address``) for the per-address caps, rate-limit keys and logs.
    """

    # The database served, set by ``start`` (pluggy reads every attribute of a plugin when it
    # registers one, so this is no property that could raise before then).
    db: Database

    def __init__(
        self,
        port: int = 3001,
        host: str = "127.0.0.1",
        path: str = "/",
        auth: Mapping[str, Any] | None = None,
        resources: Mapping[str, Any] | None = None,
        rate_limit: Mapping[str, Any] | None = None,
        heartbeat_interval: float | None = 30.0,
        max_message_size: int = 1 << 20,
        max_queue_bytes: int = 1 << 20,
        compression: bool = False,
        auth_timeout: float = 5.0,
        routes: Iterable[web.AbstractRouteDef] = (),
        header_timeout: float = 10.0,
        max_connections_per_ip: int | None = 1024,
        max_unauthenticated_per_ip: int | None = 64,
        max_concurrent_requests: int = 8,
        filter_limits: Mapping[str, int] | FilterLimits | None = None,
        max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS,
        list_scan_limit: int = DEFAULT_LIST_SCAN_LIMIT,
        list_max_bytes: int = DEFAULT_LIST_MAX_BYTES,
        replay_max_bytes: int = DEFAULT_REPLAY_MAX_BYTES,
        max_frame_values: int = DEFAULT_MAX_FRAME_VALUES,
        metrics: bool | Mapping[str, Any] = False,
        trusted_proxies: Iterable[str] | str | None = None,
        proxy_header: str = "X-Forwarded-For",
        channels: Mapping[str, Any] | None = None,
        max_channels_per_connection: int = DEFAULT_MAX_CHANNELS_PER_CONNECTION,
        presence_timeout: float = DEFAULT_PRESENCE_TIMEOUT,
        channel_rate_limit: Mapping[str, int] | None = None,
        max_subscriptions_per_ip: int | None = DEFAULT_MAX_SUBSCRIPTIONS_PER_IP,
        max_filter_bytes_per_ip: int | None = DEFAULT_MAX_FILTER_BYTES_PER_IP,
        max_subscriptions_per_user: int | None = DEFAULT_MAX_SUBSCRIPTIONS_PER_USER,
        max_filter_bytes_per_user: int | None = DEFAULT_MAX_FILTER_BYTES_PER_USER,
    ) -> None:
        self.host = host
        self.port = port
        self.path = path if path.startswith("/") else "/" + path
        self.session_auth = SessionAuth(self, auth, auth_timeout)
        self.policies = {
            name: ResourcePolicy.from_config(name, config)
            for name, config in (resources or {}).items()
        }
        rate = rate_limit
        # The frame limiter's settings (its engine and key), which the channel limiters reuse.
        self.rate_limit_config = dict(rate) if rate and rate.get("enabled", True) else None
        self.rate_limit = RateLimit(rate) if rate and rate.get("enabled", True) else None
        self.heartbeat_interval = optional_positive_float("heartbeat_interval", heartbeat_interval)
        # 0 would mean "no limit" to aiohttp's reader: a size must be at least one byte.
        self.max_message_size = positive_int("max_message_size", max_message_size)
        self.max_queue_bytes = positive_int("max_queue_bytes", max_queue_bytes)
        self.compression = bool(compression)
        self.header_timeout = positive_float("header_timeout", header_timeout)
        self.per_ip = PerIpLimits(
            max_connections_per_ip, max_unauthenticated_per_ip
        )
        # Whose X-Forwarded-For / Forwarded header names the client (see client_address).
        self._proxies = TrustedProxies(trusted_proxies, proxy_header)
        self.max_concurrent_requests = positive_int(
            "max_concurrent_requests", max_concurrent_requests
        )
        # Extra aiohttp routes served beside the socket (an app's pages, say). A GET route at the
        # socket's own path answers the plain (non-WebSocket) GETs there: an app's page at "/".
        routes = list(routes)
        self.routes = [r for r in routes if not _is_page_route(r, self.path)]
        self._page = next((r.handler for r in routes if _is_page_route(r, self.path)), None)
        # What one client may make the server do (limits.py).
        self.filter_limits = FilterLimits.from_config(filter_limits)
        self.max_subscriptions = positive_int("max_subscriptions", max_subscriptions)
        self.list_scan_limit = positive_int("list_scan_limit", list_scan_limit)
        self.list_max_bytes = positive_int("list_max_bytes", list_max_bytes)
        self.max_frame_values = positive_int("max_frame_values", max_frame_values)
        self.metrics_token = _metrics_token(metrics)
        self.metrics_enabled = bool(metrics)

        # What one address and one user may hold in subscriptions (budgets.py), shared
        # across processes when the rate limiter is the Redis one.
        self.holdings = Holdings(
            max_subscriptions_per_ip=max_subscriptions_per_ip,
            max_filter_bytes_per_ip=max_filter_bytes_per_ip,
            max_subscriptions_per_user=max_subscriptions_per_user,
            max_filter_bytes_per_user=max_filter_bytes_per_user,
            shared=RedisHoldings.from_rate_limit(rate) if self.rate_limit else None,
        )

        self.connections: set[Connection] = set()
        self.registry = SubscriptionRegistry(release=self.holdings.release)
        self.resumer = Resumer(
            self.registry,
            max_hold_bytes=self.max_queue_bytes,
            # A replay goes out through the send queue, beside the frames held meanwhile: one
            # that could not fit would close the client with 4408, again at every reconnect.
            replay_max_bytes=min(
                positive_int("replay_max_bytes", replay_max_bytes), self.max_queue_bytes // 2
            ),
        )
        self._rechecks: set[asyncio.Task] = set()
        self.handlers = Handlers(self)
        # Ephemeral channels (channels.py): broadcast and presence, never stored.
        self.channels = Channels(
            self,
            channels,
            max_per_connection=max_channels_per_connection,
            presence_timeout=presence_timeout,
            rates=channel_rate_limit,
        )
        self.metrics = Metrics(
            lambda: len(self.connections),
            lambda: len(self.registry),
            lambda: self.db.stats.damaged_records if hasattr(self, "db") else 0,
            lambda: self.db.stats.snapshot() if hasattr(self, "db") else {},
        )
        self.channels.register_metrics(self.metrics.registry)
        self._runner: web.AppRunner | None = None
        # Started by ``s3db serve --workers N``: share the port (SO_REUSEPORT), on a shared broker.
        self.workers = WorkerSettings.from_env()
        self._handler_tasks: set[asyncio.Task] = set()
        self._started = 0.0

    @classmethod
    def from_seed(cls, **options: Any) -> WebSocketPlugin:
        """A plugin from keyword arguments spelled the JavaScript way (``rateLimit``,
        ``heartbeatInterval``, ``maxMessageSize``, ``maxQueueBytes``, ``authTimeout``; see
        ``SEED_KEYWORDS``); other names are passed on as they are."""
        kwargs: dict[str, Any] = {}
        for key, value in options.items():
            name = SEED_KEYWORDS.get(key, key)
            if name in kwargs:
                raise TypeError(f"WebSocketPlugin.from_seed() got {name!r} twice (as {key!r})")
            kwargs[name] = value
        return cls(**kwargs)

    @property
    def trusted_proxies(self) -> TrustedProxies:
        """The reverse proxies whose forwarding header gives the client's address; assign a
        list of addresses/networks (or a comma-separated string) to change them."""
        return self._proxies

    @trusted_proxies.setter
    def trusted_proxies(self, proxies: TrustedProxies | Iterable[str] | str | None) -> None:
        if not isinstance(proxies, TrustedProxies):
            proxies = TrustedProxies(proxies, self._proxies.header)
        self._proxies = proxies

    @property
    def url(self) -> str:
        """The WebSocket URL clients connect to (the bound port once started)."""
        return f"ws://{self.host}:{self.port}{self.path}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- hooks --------------------------------------------------------------------------------
    @hookimpl
    async def s3db_startup(self, db: Database) -> None:
        await self.start(db)

    @hookimpl
    async def s3db_shutdown(self, db: Database) -> None:
        await self.stop()

    @hookimpl
    def s3db_change(self, change: Change) -> None:
        """Fan a durable change out (synchronously, so commit order per resource holds)."""
        policy = self.policies.get(change.resource)
        if policy is None or self._runner is None:
            return
        started = time.perf_counter()
        try:
            resumer = self.resumer
            resumer.positions.advance(change)
            if not resumer.gate.admit(change):  # older than a version already fanned out
                return
            receivers, leaving = self.registry.deliveries(change, policy)
            if receivers:
                self._deliver(change, receivers, event_frame(change, policy), policy)
            if leaving:  # the record left their access: its id, nothing of its new content
                self._deliver(change, leaving, event_frame(change, policy, leave=True), policy)
        except Exception:  # the write is durable: never fail it because delivery broke
            log.exception(
                "change fan-out failed",
                error_id=secrets.token_hex(8),
                resource=change.resource,
                change_event=change.event,
            )
            return
        self.metrics.event(change.resource, change.event).inc()
        self.metrics.fanout_seconds.observe(time.perf_counter() - started)

    def _deliver(
        self,
        change: Change,
        receivers: list[Connection],
        event: dict[str, Any],
        policy: ResourcePolicy,
    ) -> None:
        """Send one event frame, serialized once, to each receiver; a receiver that fails is
        logged with an error id and never keeps the frame from the others. A connection whose
        subscription is resuming gets it after the replay (held), or not at all when a replay
        or snapshot of it already did (guarded)."""
        payload = encode(event)
        frame = text_frame(payload)
        resumer = self.resumer
        holds, guards = resumer.holds, resumer.guards
        for conn in receivers:
            try:
                if holds and conn in holds:
                    holds[conn].add(change, payload)
                elif guards and conn in guards and resumer.guarded(conn, change, policy):
                    continue
                else:
                    conn.send(payload, frame)
            except Exception:
                log.exception(
                    "event delivery failed",
                    error_id=secrets.token_hex(8),
                    resource=change.resource,
                    receiver=conn.client_id,
                )
        self.metrics.frames_out.inc(len(receivers))

    def position_of(self, resource: str) -> dict[str, Any] | None:
        """The position of the last change of ``resource`` this process fanned out (a new
        subscription gets every later one), None before the first."""
        fanned = self.resumer.positions.fanned.get(resource)
        return None if fanned is None else Position(fanned[1], fanned[0]).to_dict()

    # -- server lifecycle ---------------------------------------------------------------------
    async def start(self, db: Database) -> None:
        """Start serving ``db`` on ``host:port`` (port 0 picks a free one; see ``self.port``)."""
        if self._runner is not None:
            return
        if self.workers is not None:
            self.workers.check_broker(db)
        self.db = db
        hookspecs.add_hookspecs(db.pm)
        app = web.Application()
        app.router.add_get("/health", self._health)
        if self.metrics_enabled:  # never on the public listener unless asked for
            app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/client.js", self._client_js)
        app.router.add_get(self.path, self._websocket)
        app.add_routes(self.routes)
        # aiohttp closes a connection whose first request head is not complete within its
        # keep-alive timeout: that is the header deadline against half-sent requests.
        runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=CLOSE_TIMEOUT,
            keepalive_timeout=self.header_timeout,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_port=self.workers is not None)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        await self.holdings.start()
        self._runner = runner
        await self.channels.start(db)
        self._started = time.monotonic()
        pages = [
            f"{self.http_url}{r.path}"
            for r in self.routes
            if isinstance(r, web.RouteDef) and r.method == "GET"
        ]
        if self._page is not None:
            pages.insert(0, f"{self.http_url}{self.path}")
        log.info("listening", websocket=self.url, pages=pages, resources=sorted(self.policies))
        if self.workers is not None:
            self.workers.ready(self.url)

    async def stop(self) -> None:
        """Close every socket with 1001 (server shutting down) and stop the server."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for conn in list(self.connections):
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
            self.metrics.closes.labels(str(CloseCode.GOING_AWAY)).inc()
        if self._handler_tasks:
            await asyncio.wait(set(self._handler_tasks), timeout=CLOSE_TIMEOUT + 1)
        await self.channels.stop()
        await runner.cleanup()
        await self.holdings.close()
        close = getattr(self.rate_limit.limiter, "close", None) if self.rate_limit else None
        if close is not None:  # a shared limiter's connections (redis) end with the server
            await await_me_maybe(close())
        log.info("websocket server stopped")

    # -- HTTP routes --------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        reachable = await self._store_reachable()
        body = {
            "status": "ok" if reachable else "degraded",
            "connections": len(self.connections),
            "subscriptions": len(self.registry),
            "uptime": round(time.monotonic() - self._started, 3),
            "store": {"reachable": reachable},
        }
        return web.Response(
            body=encode(body), status=200 if reachable else 503, content_type="application/json"
        )

    async def _store_reachable(self) -> bool:
        storage = self.db.storage
        try:
            await asyncio.wait_for(storage.list("", max_keys=1), 2.0)
        except Exception:
            return False
        return True

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics_token is not None:
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {self.metrics_token}"
            if not secrets.compare_digest(given.encode(), expected.encode()):
                return web.Response(
                    status=401,
                    text="a bearer token is required\n",
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        return web.Response(body=self.metrics.render(), headers={"Content-Type": Metrics.content_type})

    async def _client_js(self, request: web.Request) -> web.FileResponse:
        """The browser client (an ES module any origin may import; it holds no secrets)."""
        return web.FileResponse(
            CLIENT_JS,
            headers={
                "Content-Type": "text/javascript; charset=utf-8",
                "Cache-Control": "no-cache",
                "Access-Control-Allow-Origin": "*",
            },
        )

    # -- connections --------------------------------------------------------------------------
    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            heartbeat=self.heartbeat_interval,
            max_msg_size=self.max_message_size,
            compress=self.compression,
        )
        if not ws.can_prepare(request).ok:
            if self._page is not None:
                return await self._page(request)
            return web.Response(status=426, text="this endpoint speaks WebSocket only\n")
        ip = client_address(request, self._proxies)
        # A socket without credentials in its upgrade request waits for an auth frame: those
        # are capped separately (the ones with credentials are signed in or rejected at once).
        pending = self.session_auth.required and not Credentials.from_request(
            request.headers, request.query
        ).present
        refused = self.per_ip.admit(ip, unauthenticated=pending)
        if refused is not None:
            log.debug("connection refused", remote=ip, reason=refused)  # debug: a flood is cheap
            return web.Response(status=429, text=refused + "\n", headers={"Retry-After": "5"})
        try:
            await ws.prepare(request)
            if self._runner is None:  # stopping: do not start a session that would be cut off
                await ws.close(code=CloseCode.GOING_AWAY, message=b"server shutting down")
                return ws
            conn = Connection(
                ws,
                request,
                client_id=secrets.token_urlsafe(12),
                max_queue_bytes=self.max_queue_bytes,
                compress=self.compression,
                registry=self.registry,
                remote=ip,
            )
            task = asyncio.current_task()
            assert task is not None
            self._handler_tasks.add(task)
            self.connections.add(conn)
            # Bound in this handler task's own context (not with ``bound_contextvars``, whose
            # generator would stay alive for the whole session: ~0.4 KiB per socket).
            structlog.contextvars.bind_contextvars(client_id=conn.client_id)
            log.debug("connection opened", remote=conn.remote, peer=request.remote)
            announced = False
            try:
                if await self._auth_phase(conn, request):
                    if pending:
                        self.per_ip.authenticated(ip)
                        pending = False
                    announced = True
                    await call_each_isolated(self.db.pm.hook.s3db_ws_connected, connection=conn)
                    await self._session(conn)
            finally:
                self.resumer.release(conn)
                self.registry.remove_connection(conn)
                self.connections.discard(conn)
                await conn.finish()
                # A subscribe that was in flight when the socket closed may have added its
                # subscription after the first removal: forget it too (and what it held).
                self.registry.remove_connection(conn)
                self.channels.drop_connection(conn)  # after finish: no join is still running
                if announced:
                    await call_each_isolated(
                        self.db.pm.hook.s3db_ws_disconnected,
                        connection=conn,
                        code=ws.close_code,
                    )
                if conn.overflowed:
                    self.metrics.closes.labels(str(CloseCode.SLOW_CONSUMER)).inc()
                self._handler_tasks.discard(task)
                log.debug("connection closed", close_code=ws.close_code)
                structlog.contextvars.unbind_contextvars("user_id", "client_id")
        finally:
            self.per_ip.release(ip, authenticated=not pending)
        return ws

    async def _auth_phase(self, conn: Connection, request: web.Request) -> bool:
        """Authenticate from the upgrade request, else wait for an ``auth`` frame until the
        absolute deadline ``auth_timeout`` after the upgrade (neither WebSocket pings nor
        ``ping`` frames extend it). True once the connection is signed in (or anonymous)."""
        auth = self.session_auth
        if not await auth.open(conn, request):
            return False
        deadline = asyncio.get_running_loop().time() + auth.timeout
        ws = conn.ws
        while not conn.authenticated:
            if conn.closing:
                return False
            try:
                # Our own deadline: aiohttp's receive(timeout) restarts at every control frame.
                async with asyncio.timeout_at(deadline):
                    msg = await ws.receive()
            except TimeoutError:
                auth.reject(conn, f"no auth frame within {auth.timeout:g} s")
                return False
            if conn.closing:
                return False
            if msg.type not in _DATA_FRAMES:
                self._log_receive_error(conn, msg)
                return False
            await self._on_frame(conn, msg.data, inline=True)
        return not conn.closing

    async def _session(self, conn: Connection) -> None:
        """Read frames until the socket closes. Requests run concurrently, up to
        ``max_concurrent_requests`` per connection (replies carry their requestId), so a ping
        or a read is answered while a slow write is in flight; see ``_INLINE``/``_BARRIERS``."""
        ws = conn.ws
        while not conn.closing:
            msg = await ws.receive()
            if conn.closing:  # closed meanwhile (4408, token expiry): execute nothing more
                return
            if msg.type not in _DATA_FRAMES:
                self._log_receive_error(conn, msg)
                return
            await self._on_frame(conn, msg.data)

    @staticmethod
    def _log_receive_error(conn: Connection, msg: Any) -> None:
        if msg.type is WSMsgType.ERROR:
            log.info("connection error", error=str(msg.data)[:200], close_code=conn.ws.close_code)

    async def _on_frame(self, conn: Connection, raw: str | bytes, *, inline: bool = False) -> None:
        """Count, decode and validate one frame, then run it: here (``inline``, pings) or as a
        request task of the connection (waiting for a slot when all are busy)."""
        self.metrics.frames_in.inc()
        rid = None
        try:
            try:
                check_frame(raw, self.max_frame_values)
            except ProtocolError:  # refused unparsed: its requestId from the raw text
                rid = recover_request_id(raw)
                raise
            msg: Any = decode(raw)
            bad_json = None
            rid = request_id_of(msg)
        except ProtocolError as exc:
            msg, bad_json = None, exc
        # structlog's request_id, bound and reset by token (see internals.structlog_var); a request task
        # copies this context when it is created.
        token = _REQUEST_ID.set(clip(rid))
        try:
            if self.rate_limit is not None:
                decision = await self.rate_limit.hit(conn)
                if not decision.allowed:
                    raise ProtocolError(
                        ErrorCode.RATE_LIMITED,
                        f"rate limit exceeded; retry in {decision.retry_after_ms} ms",
                        retryAfterMs=decision.retry_after_ms,
                    )
            if bad_json is not None:
                raise bad_json
            req = parse(msg, self.handlers.messages, custom=True)
            if inline or req.type in _INLINE:
                await self._run(conn, req, msg)
                return
            while conn.requests_in_flight >= self.max_concurrent_requests:
                await conn.request_done()
            conn.start_request(self._run(conn, req, msg), barrier=req.type in _BARRIERS)
        except Exception as exc:
            self._reply_error(conn, exc, msg, rid)
        finally:
            _REQUEST_ID.reset(token)

    async def _run(self, conn: Connection, req: Any, msg: Any) -> None:
        """Execute one parsed frame and send its answer (or its error)."""
        try:
            handlers = self.handlers
            declared = handlers.messages.get(req.type)
            if not conn.authenticated and (declared is None or not declared.before_auth):
                self.session_auth.reject(conn, "authenticate first: send an auth frame", req.request_id)
                return
            answer = await handlers.table.get(req.type, handlers.custom)(conn, req)
            if answer is not None:
                self.send(conn, answer)
        except Exception as exc:
            self._reply_error(conn, exc, msg, req.request_id)

    def _reply_error(self, conn: Connection, exc: Exception, msg: Any, rid: Any) -> None:
        error = client_error(exc)
        if error is None:
            error = self._internal_error(exc, msg)
        self.send_error(conn, error, rid)

    def _internal_error(self, exc: Exception, msg: Any) -> ProtocolError:
        error_id = secrets.token_hex(8)
        kind = msg.get("type") if isinstance(msg, dict) and isinstance(msg.get("type"), str) else None
        log.error("internal error", error_id=error_id, frame_type=clip(kind), exc_info=exc)
        return ProtocolError(
            ErrorCode.INTERNAL_ERROR,
            f"internal error; quote errorId {error_id} when reporting it",
            errorId=error_id,
        )

    def send(self, conn: Connection, frame: dict[str, Any]) -> None:
        """Send one server frame to ``conn`` (counted in the metrics)."""
        conn.send(encode(frame))
        self.metrics.frames_out.inc()

    def send_error(self, conn: Connection, error: ProtocolError, request_id: Any = None) -> None:
        """Send an ``error`` frame to ``conn`` (counted by code in the metrics)."""
        self.metrics.error(error.code).inc()
        self.send(conn, error_frame(error, request_id))

    # -- channels -----------------------------------------------------------------------------
    async def broadcast(self, channel: str, event: str, data: Any) -> None:
        """Send ``event`` with ``data`` to every member of ``channel`` on every process (the
        frame's ``from`` is ``{clientId: None, userId: None}``). ValueError when no
        ``channels`` pattern matches the name."""
        await self.channels.broadcast(channel, event, data)

    async def presence(self, channel: str) -> list[dict[str, Any]]:
        """The members of ``channel`` across processes: ``[{clientId, userId, info,
        joinedAt}]`` (empty for a channel without ``presence``)."""
        return await self.channels.presence(channel)

    # -- revocation ---------------------------------------------------------------------------
    def recheck(
        self,
        resource: str | None = None,
        *,
        where: Mapping[str, Any] | None = None,
        user_id: Any = None,
        connections: Iterable[Connection] | None = None,
    ) -> asyncio.Task[int]:
        """Re-run the role list and ``subscribe`` guard of open subscriptions (all, or those on
        ``resource`` whose filter pins ``where``, of ``user_id``'s connections) and revoke the
        ones no longer allowed; see ``recheck.py``. Callable from sync code such as an
        ``s3db_change`` hook; ``await`` the task for the number revoked."""
        task = asyncio.get_running_loop().create_task(
            recheck_subscriptions(
                self, resource, where=where, user_id=user_id, connections=connections
            )
        )
        self._rechecks.add(task)
        task.add_done_callback(self._rechecks.discard)
        return task
