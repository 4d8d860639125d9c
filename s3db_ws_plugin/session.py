"""A WebSocket session: the socket's lifecycle (per-address caps, the connection, its teardown),
the auth phase and its deadline, the read loop, and the dispatch of each frame as its
``@message`` declaration says (answered at once, a request task, or a barrier)."""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import WSMsgType, web

from s3db_auth_drivers import Credentials
from s3db_core.log import get_logger
from s3db_core.plugins import call_each_isolated

from .connection import Connection, PerIpLimits, TrustedProxies, client_address
from .internals import structlog_var
from .limits import check_frame, clip, recover_request_id
from .protocol import (
    CloseCode,
    ErrorCode,
    ProtocolError,
    client_error,
    decode,
    parse,
    request_id_of,
)

if TYPE_CHECKING:
    from .auth import SessionAuth
    from .channels import Channels
    from .handlers import Handlers
    from .rate_limiters import RateLimit
    from .server import Server

log = get_logger("s3db.ws")


_REQUEST_ID = structlog_var("request_id")
_DATA_FRAMES = (WSMsgType.TEXT, WSMsgType.BINARY)



class Sessions:
    """The sessions of one plugin's sockets."""

    def __init__(
        self,
        server: Server,
        handlers: Handlers,
        session_auth: SessionAuth,
        channels: Channels,
        *,
        rate_limit: RateLimit | None,
        proxies: TrustedProxies,
        page: Any = None,
    ) -> None:
        self.server = server
        settings = self.settings = server.settings
        self.handlers = handlers
        self.session_auth = session_auth
        self.channels = channels
        self.rate_limit = rate_limit
        # Whose X-Forwarded-For / Forwarded header names the client (see client_address).
        self.proxies = proxies
        # The GET handler of an app's page at the socket's path (plain GETs there), or None.
        self.page = page
        self.per_ip = PerIpLimits(
            settings.max_connections_per_ip, settings.max_unauthenticated_per_ip
        )
        # The handler task of each open socket (the plugin's stop waits for them).
        self.tasks: set[asyncio.Task] = set()
        # The open connections' clean-up: one bound method for all of them.
        self._forget = server.connections.discard

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The socket path's GET handler: a WebSocket session (or the page at that path)."""
        ws = web.WebSocketResponse(
            heartbeat=self.settings.heartbeat_interval,
            max_msg_size=self.settings.max_message_size,
            compress=self.settings.compression,
        )
        if not ws.can_prepare(request).ok:
            if self.page is not None:
                return await self.page(request)
            return web.Response(status=426, text="this endpoint speaks WebSocket only\n")
        ip = client_address(request, self.proxies)
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
            if not self.server.serving:  # stopping: do not start a session that would be cut off
                await ws.close(code=CloseCode.GOING_AWAY, message=b"server shutting down")
                return ws
            conn = Connection(
                ws,
                request,
                client_id=secrets.token_urlsafe(12),
                max_queue_bytes=self.settings.max_queue_bytes,
                compress=self.settings.compression,
                registry=self.server.registry,
                remote=ip,
            )
            task = asyncio.current_task()
            assert task is not None
            self.tasks.add(task)
            self.server.connections.add(conn)
            conn.on_close(self._forget)
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
                    await call_each_isolated(self.server.db.pm.hook.s3db_ws_connected, connection=conn)
                    await self._session(conn)
            finally:
                # The connection owns what its owners registered (open connections, the
                # registry's subscriptions and holdings, the resumer's holds and guards,
                # channel memberships): forget it now, so no change is fanned out to it...
                conn.run_cleanups()
                await conn.finish()
                # ...and again once its requests in flight are done: a subscribe or a join
                # that was running when the socket closed may have added some meanwhile.
                conn.run_cleanups()
                if announced:
                    await call_each_isolated(
                        self.server.db.pm.hook.s3db_ws_disconnected,
                        connection=conn,
                        code=ws.close_code,
                    )
                if conn.overflowed:
                    self.server.metrics.closes.labels(str(CloseCode.SLOW_CONSUMER)).inc()
                self.tasks.discard(task)
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
        or a read is answered while a slow write is in flight; each frame runs as its
        ``@message`` declaration says (``inline``, ``barrier``)."""
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
        self.server.metrics.frames_in.inc()
        rid = None
        try:
            try:
                check_frame(raw, self.settings.max_frame_values)
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
            messages = self.handlers.messages
            req = parse(msg, messages, custom=True)
            declared = messages.get(req.type)  # None: a custom type, run as a request
            if inline or (declared is not None and declared.inline):
                await self._run(conn, req, msg)
                return
            while conn.requests_in_flight >= self.settings.max_concurrent_requests:
                await conn.request_done()
            barrier = declared is not None and declared.barrier
            conn.start_request(self._run(conn, req, msg), barrier=barrier)
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
                self.server.send(conn, answer)
        except Exception as exc:
            self._reply_error(conn, exc, msg, req.request_id)

    def _reply_error(self, conn: Connection, exc: Exception, msg: Any, rid: Any) -> None:
        error = client_error(exc)
        if error is None:
            error = self._internal_error(exc, msg)
        self.server.send_error(conn, error, rid)

    def _internal_error(self, exc: Exception, msg: Any) -> ProtocolError:
        error_id = secrets.token_hex(8)
        kind = msg.get("type") if isinstance(msg, dict) and isinstance(msg.get("type"), str) else None
        log.error("internal error", error_id=error_id, frame_type=clip(kind), exc_info=exc)
        return ProtocolError(
            ErrorCode.INTERNAL_ERROR,
            f"internal error; quote errorId {error_id} when reporting it",
            errorId=error_id,
        )
