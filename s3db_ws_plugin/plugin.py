"""``WebSocketPlugin``: the pluggy hooks and the aiohttp app (routes, start, stop).

It is an ordinary pluggy plugin of the ``s3db`` project: ``s3db_startup`` starts the server,
``s3db_shutdown`` closes every socket with 1001 and stops it, ``s3db_change`` fans a durable
change out to the connections allowed to see it. The core knows nothing about it. The work is
elsewhere: ``settings.py`` (the options, validated once), ``server.py`` (what the parts share),
``session.py`` (a socket's session), ``fanout.py`` (a change's delivery).

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

from . import hookspecs
from .auth import SessionAuth
from .budgets import (
    DEFAULT_MAX_FILTER_BYTES_PER_IP,
    DEFAULT_MAX_FILTER_BYTES_PER_USER,
    DEFAULT_MAX_SUBSCRIPTIONS_PER_IP,
    DEFAULT_MAX_SUBSCRIPTIONS_PER_USER,
    Holdings,
)
from .channels import DEFAULT_MAX_CHANNELS_PER_CONNECTION, DEFAULT_PRESENCE_TIMEOUT, Channels
from .connection import CLOSE_TIMEOUT, Connection, TrustedProxies
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
from .protocol import CloseCode, ProtocolError, encode
from .rate_limiters import RateLimit
from .recheck import recheck_subscriptions
from .resume import DEFAULT_REPLAY_MAX_BYTES, Resumer
from .server import Server
from .session import Sessions
from .settings import SEED_KEYWORDS, Settings
from .subscriptions import SubscriptionRegistry
from .workers import WorkerSettings

__all__ = ["SEED_KEYWORDS", "WebSocketPlugin"]

log = get_logger("s3db.ws")


CLIENT_JS = Path(__file__).parent / "static" / "client.js"


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
        self.settings = Settings.from_options(
            port=port,
            host=host,
            path=path,
            rate_limit=rate_limit,
            heartbeat_interval=heartbeat_interval,
            max_message_size=max_message_size,
            max_queue_bytes=max_queue_bytes,
            compression=compression,
            auth_timeout=auth_timeout,
            header_timeout=header_timeout,
            max_connections_per_ip=max_connections_per_ip,
            max_unauthenticated_per_ip=max_unauthenticated_per_ip,
            max_concurrent_requests=max_concurrent_requests,
            filter_limits=filter_limits,
            max_subscriptions=max_subscriptions,
            list_scan_limit=list_scan_limit,
            list_max_bytes=list_max_bytes,
            replay_max_bytes=replay_max_bytes,
            max_frame_values=max_frame_values,
            metrics=metrics,
            max_channels_per_connection=max_channels_per_connection,
            presence_timeout=presence_timeout,
            channel_rate_limit=channel_rate_limit,
            max_subscriptions_per_ip=max_subscriptions_per_ip,
            max_filter_bytes_per_ip=max_filter_bytes_per_ip,
            max_subscriptions_per_user=max_subscriptions_per_user,
            max_filter_bytes_per_user=max_filter_bytes_per_user,
        )
        settings = self.settings
        self.host = settings.host
        self.port = settings.port  # the bound one once started (port 0 picks a free one)
        self.path = settings.path
        policies = {
            name: ResourcePolicy.from_config(name, config)
            for name, config in (resources or {}).items()
        }
        # What the parts share; each receives this, never the plugin (server.py).
        self.server = Server(settings, policies)
        self.session_auth = SessionAuth(self.server, auth, settings.auth_timeout, self.recheck)
        # Ephemeral channels (channels.py): broadcast and presence, never stored.
        self.channels = Channels(self.server, channels)
        self.handlers = Handlers(self.server, self.session_auth, self.channels)
        self.channels.register_metrics(self.server.metrics.registry)
        self.rate_limit = RateLimit(settings.rate_limit) if settings.rate_limit else None
        # Extra aiohttp routes served beside the socket (an app's pages, say). A GET route at the
        # socket's own path answers the plain (non-WebSocket) GETs there: an app's page at "/".
        routes = list(routes)
        self.routes = [r for r in routes if not _is_page_route(r, self.path)]
        page = next((r.handler for r in routes if _is_page_route(r, self.path)), None)
        self.sessions = Sessions(
            self.server,
            self.handlers,
            self.session_auth,
            self.channels,
            rate_limit=self.rate_limit,
            # Whose X-Forwarded-For / Forwarded header names the client (see client_address).
            proxies=TrustedProxies(trusted_proxies, proxy_header),
            page=page,
        )
        self.fanout = FanOut(self.server)
        self._rechecks: set[asyncio.Task] = set()
        self._runner: web.AppRunner | None = None
        # Started by ``s3db serve --workers N``: share the port (SO_REUSEPORT), on a shared broker.
        self.workers = WorkerSettings.from_env()
        self._started = 0.0

    # -- what the parts share, read through the plugin -------------------------------------------
    @property
    def policies(self) -> dict[str, ResourcePolicy]:
        return self.server.policies

    @property
    def connections(self) -> set[Connection]:
        return self.server.connections

    @property
    def registry(self) -> SubscriptionRegistry:
        return self.server.registry

    @property
    def holdings(self) -> Holdings:
        return self.server.holdings

    @property
    def resumer(self) -> Resumer:
        return self.server.resumer

    @property
    def metrics(self) -> Metrics:
        return self.server.metrics

    @property
    def max_message_size(self) -> int:
        return self.settings.max_message_size

    @property
    def heartbeat_interval(self) -> float | None:
        return self.settings.heartbeat_interval

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
        return self.sessions.proxies

    @trusted_proxies.setter
    def trusted_proxies(self, proxies: TrustedProxies | Iterable[str] | str | None) -> None:
        if not isinstance(proxies, TrustedProxies):
            proxies = TrustedProxies(proxies, self.sessions.proxies.header)
        self.sessions.proxies = proxies

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
        return self.server.position_of(resource)

    # -- server lifecycle ---------------------------------------------------------------------
    async def start(self, db: Database) -> None:
        """Start serving ``db`` on ``host:port`` (port 0 picks a free one; see ``self.port``)."""
        if self._runner is not None:
            return
        if self.workers is not None:
            self.workers.check_broker(db)
        self.db = self.server.db = db
        hookspecs.add_hookspecs(db.pm)
        app = web.Application()
        app.router.add_get("/health", self._health)
        if self.settings.metrics_enabled:  # never on the public listener unless asked for
            app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/client.js", self._client_js)
        app.router.add_get(self.path, self.sessions.handle)
        app.add_routes(self.routes)
        # aiohttp closes a connection whose first request head is not complete within its
        # keep-alive timeout: that is the header deadline against half-sent requests.
        runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=CLOSE_TIMEOUT,
            keepalive_timeout=self.settings.header_timeout,
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
        self.server.serving = True
        await self.channels.start(db)
        self._started = time.monotonic()
        pages = [
            f"{self.http_url}{r.path}"
            for r in self.routes
            if isinstance(r, web.RouteDef) and r.method == "GET"
        ]
        if self.sessions.page is not None:
            pages.insert(0, f"{self.http_url}{self.path}")
        log.info("listening", websocket=self.url, pages=pages, resources=sorted(self.policies))
        if self.workers is not None:
            self.workers.ready(self.url)

    async def stop(self) -> None:
        """Close every socket with 1001 (server shutting down) and stop the server."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.server.serving = False
        for conn in list(self.connections):
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
            self.metrics.closes.labels(str(CloseCode.GOING_AWAY)).inc()
        if self.sessions.tasks:
            await asyncio.wait(set(self.sessions.tasks), timeout=CLOSE_TIMEOUT + 1)
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
        token = self.settings.metrics_token
        if token is not None:
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {token}"
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
        self.server.send(conn, frame)

    def send_error(self, conn: Connection, error: ProtocolError, request_id: Any = None) -> None:
        """Send an ``error`` frame to ``conn`` (counted by code in the metrics)."""
        self.server.send_error(conn, error, request_id)

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
                self.server,
                self.handlers.subscription_filter,
                resource,
                where=where,
                user_id=user_id,
                connections=connections,
            )
        )
        self._rechecks.add(task)
        task.add_done_callback(self._rechecks.discard)
        return task
