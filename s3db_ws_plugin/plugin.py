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

from aiohttp import web

from s3db_core import Change, Database, await_me_maybe, hookimpl
from s3db_core.log import get_logger
from s3db_core.options import optional_positive_float, positive_float, positive_int

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
)
from .fanout import FanOut
from .guards import ResourcePolicy
from .handlers import Handlers
from .limits import (
    DEFAULT_LIST_MAX_BYTES,
    DEFAULT_LIST_SCAN_LIMIT,
    DEFAULT_MAX_FRAME_VALUES,
    DEFAULT_MAX_SUBSCRIPTIONS,
    FilterLimits,
)
from .metrics import Metrics
from .protocol import (
    CloseCode,
    ProtocolError,
    encode,
    error_frame,
)
from .rate_limiters import RateLimit
from .recheck import recheck_subscriptions
from .resume import DEFAULT_REPLAY_MAX_BYTES, Resumer
from .session import Sessions
from .subscriptions import SubscriptionRegistry
from .workers import WorkerSettings

log = get_logger("s3db.ws")


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
        )
        self.channels.register_metrics(self.metrics.registry)
        self._runner: web.AppRunner | None = None
        # Started by ``s3db serve --workers N``: share the port (SO_REUSEPORT), on a shared broker.
        self.workers = WorkerSettings.from_env()
        self._handler_tasks: set[asyncio.Task] = set()
        self._started = 0.0
        self.sessions = Sessions(self)
        self.fanout = FanOut(self)

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
        self.fanout.change(change)

    def position_of(self, resource: str) -> dict[str, Any] | None:
        """The position of the last change of ``resource`` this process fanned out (a new
        subscription gets every later one), None before the first."""
        return self.fanout.position_of(resource)

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
        app.router.add_get(self.path, self.sessions._websocket)
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
