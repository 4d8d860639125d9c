"""Session authentication: who a connection is, from its upgrade request to its token's expiry.

The auth phase of a socket, in one place:

- upgrade credentials (``Authorization: Bearer``, ``X-API-Key``, ``?token=``) go through the
  driver chain when the socket opens: a user logs in, invalid credentials are rejected, none
  leave the connection anonymous (accepted at once unless auth is required, in which case the
  client must send an ``auth`` frame before the plugin's auth deadline);
- the ``auth {token}`` frame: the first-frame login, or an in-band refresh of the same user,
  after which that connection's subscriptions are re-checked (new claims may allow less);
- the expiry timer: a token's ``exp`` closes the socket unless a refresh came first;
- rejection: ``error UNAUTHORIZED`` then close 4401.

Logging in answers ``connected`` (first login) and binds ``user_id`` for the connection's logs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from s3db_auth_drivers import AuthChain, AuthError, Credentials, User
from s3db_core.log import get_logger

from .limits import clip
from .protocol import CloseCode, ErrorCode, ProtocolError, Request, now_ms, reply

if TYPE_CHECKING:
    from .connection import Connection
    from .server import Server

log = get_logger("s3db.ws")


class SessionAuth:
    """The auth phase of every connection of one plugin.

    ``config``: ``{"required": bool, "drivers": [{"driver": name, "config": {...}}]}`` (drivers
    from the ``s3db.auth_drivers`` group; ``required`` defaults to True when drivers are given).
    """

    def __init__(
        self,
        server: Server,
        config: Mapping[str, Any] | None,
        timeout: float,
        recheck: Callable[..., Awaitable[int]],
    ) -> None:
        config = dict(config or {})
        self.server = server
        self.required = bool(config.get("required", bool(config.get("drivers"))))
        self.chain = AuthChain(config.get("drivers") or [])
        self.timeout = timeout  # validated by Settings (auth_timeout)
        # Re-runs the subscribe guards of given connections (the plugin's ``recheck``).
        self.recheck = recheck

    async def open(self, conn: Connection, request: web.Request) -> bool:
        """Authenticate from the upgrade request's credentials; False when rejected (the
        socket is closing). An anonymous connection is accepted now unless auth is required."""
        creds = Credentials.from_request(request.headers, request.query, conn.remote)
        try:
            user = await self.chain.authenticate(creds)
        except AuthError as exc:
            self.reject(conn, str(exc) or "invalid credentials")
            return False
        del creds  # copies of the request's headers and query: not kept for the whole session
        if user is not None:
            self.login(conn, user)
        elif not self.required:
            conn.authenticated = True
            self.server.send(
                conn, reply("connected", clientId=conn.client_id, user=None, timestamp=now_ms())
            )
        else:  # tell the client at once that an ``auth`` frame is expected, and until when
            self.server.send(conn, reply("auth_required", timeoutMs=int(self.timeout * 1000)))
        return True

    async def frame(self, conn: Connection, req: Request) -> None:
        """``auth {token}``: the first-frame login or an in-band token refresh.

        Answers ``authenticated {user}`` (then ``connected`` on a first login); invalid
        credentials answer ``error UNAUTHORIZED`` and close with 4401.
        """
        creds = Credentials(token=req.fields["token"], remote=conn.remote)
        try:
            user = await self.chain.authenticate(creds)
            if user is None:
                raise AuthError("authentication is not configured on this server")
        except AuthError as exc:
            self.reject(conn, str(exc) or "invalid credentials", req.request_id)
            return
        if conn.user is not None and user.id != conn.user.id:
            raise ProtocolError(
                ErrorCode.FORBIDDEN,
                "a refresh token must belong to the connected user; reconnect to switch users",
            )
        refresh = conn.user is not None
        self.server.send(conn, reply("authenticated", req.request_id, user=user.to_dict()))
        self.login(conn, user)
        if refresh and conn.subscriptions:  # new claims may allow less than the old ones did
            await self.recheck(connections=[conn])

    def login(self, conn: Connection, user: User) -> None:
        """``conn`` is ``user`` from now on (re-arming the expiry timer on a refresh)."""
        first = not conn.authenticated
        conn.user = user
        conn.authenticated = True
        conn.arm_expiry(user.expires_at, self._expired)
        structlog.contextvars.bind_contextvars(user_id=clip(user.id))  # claims come from clients
        if first:
            log.info("authenticated", role=clip(user.role))
            self.server.send(
                conn,
                reply(
                    "connected", clientId=conn.client_id, user=user.to_dict(), timestamp=now_ms()
                ),
            )

    def reject(self, conn: Connection, message: str, request_id: Any = None) -> None:
        """Send ``error UNAUTHORIZED`` and close with 4401."""
        log.info("unauthorized, closing", reason=clip(message))
        self.server.send_error(conn, ProtocolError(ErrorCode.UNAUTHORIZED, message), request_id)
        conn.close(CloseCode.UNAUTHORIZED, message[:100])
        self.server.metrics.closes.labels(str(CloseCode.UNAUTHORIZED)).inc()

    def _expired(self, conn: Connection) -> None:
        self.reject(conn, "token expired")
