"""Helpers for the plugin tests that check the wire protocol from outside: a served database,
JWTs, and a small raw-frame client built on the independent ``websockets`` library.

Tests whose subject is what a user sees use the product's ``s3db_ws_plugin.client.Client`` and
the pytest plugin's fixtures instead (see ``client_helpers``); these helpers serve the tests
whose subject is the frames themselves: exact shapes, malformed input, close codes, timing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import jwt
import websockets
from websockets.exceptions import ConnectionClosed

from s3db_core import Database
from s3db_ws_plugin import WebSocketPlugin

SECRET = "test-secret-with-enough-bytes-for-hs256"
JWT_AUTH = {"required": True, "drivers": [{"driver": "jwt", "config": {"secret": SECRET}}]}
TIMEOUT = 5.0


def make_token(
    sub: str = "u1",
    *,
    role: str | None = None,
    expires_in: float = 3600,
    secret: str = SECRET,
    **claims: Any,
) -> str:
    """A signed HS256 JWT; floats give sub-second expiry."""
    payload: dict[str, Any] = {"sub": sub, "exp": time.time() + expires_in, **claims}
    if role is not None:
        payload["role"] = role
    return jwt.encode(payload, secret, algorithm="HS256")


@asynccontextmanager
async def serve(
    setup: Callable[[Database], Any] | None = None,
    *,
    url: str | None = None,
    seed_style: bool = False,
    **plugin_options: Any,
) -> AsyncIterator[tuple[Database, WebSocketPlugin]]:
    """A connected database (``setup(db)`` creates its resources) served on a free port
    (``seed_style``: options spelled the JavaScript way, through ``WebSocketPlugin.from_seed``)."""
    db = Database(url or f"memory://ws-{uuid.uuid4().hex[:12]}")
    await db.connect()
    try:
        if setup is not None:
            await setup(db)
        plugin_options.setdefault("port", 0)
        make = WebSocketPlugin.from_seed if seed_style else WebSocketPlugin
        plugin = make(**plugin_options)
        await db.use_plugin(plugin)
        yield db, plugin
    finally:
        await db.disconnect()


class RawClient:
    """A raw-frame client that keeps unsolicited frames (events, errors) in ``inbox``."""

    _ids = itertools.count(1)

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.inbox: list[dict[str, Any]] = []
        self.hello: dict[str, Any] | None = None

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def request(self, frame: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
        """Send ``frame`` with a fresh requestId and return the reply carrying it."""
        rid = frame.get("requestId", f"r{next(self._ids)}")
        await self.send({**frame, "requestId": rid})
        while True:
            msg = await self.recv(timeout)
            if msg.get("requestId") == rid:
                return msg
            self.inbox.append(msg)

    async def call(self, type: str, timeout: float = TIMEOUT, **fields: Any) -> dict[str, Any]:
        return await self.request({"type": type, **fields}, timeout)

    async def sync(self) -> list[dict[str, Any]]:
        """Ping and return every frame that arrived before the pong (then clear the inbox)."""
        await self.call("ping")
        frames, self.inbox = self.inbox, []
        return frames

    async def events(self) -> list[dict[str, Any]]:
        return [f for f in await self.sync() if f["type"] == "event"]

    async def next_event(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        for i, frame in enumerate(self.inbox):
            if frame["type"] == "event":
                return self.inbox.pop(i)
        while True:
            msg = await self.recv(timeout)
            if msg["type"] == "event":
                return msg
            self.inbox.append(msg)

    async def closed(self, timeout: float = TIMEOUT) -> tuple[int | None, list[dict[str, Any]]]:
        """Read until the server closes; return (close code, frames received meanwhile)."""
        frames = []
        try:
            while True:
                frames.append(json.loads(await asyncio.wait_for(self.ws.recv(), timeout)))
        except ConnectionClosed as exc:
            return (exc.rcvd.code if exc.rcvd else None), frames


@asynccontextmanager
async def connect(
    url: str, *, token: str | None = None, connected: bool = True, **options: Any
) -> AsyncIterator[RawClient]:
    """Open a client; with ``connected`` wait for (and keep) the ``connected`` frame."""
    if token is not None:
        url = f"{url}?token={token}"
    options.setdefault("max_size", None)
    async with websockets.connect(url, open_timeout=TIMEOUT, **options) as ws:
        client = RawClient(ws)
        if connected:
            hello = await client.recv()
            assert hello["type"] == "connected", hello
            client.hello = hello
        yield client


async def notes_resource(db: Database) -> None:
    """The resource most tests use: notes in rooms, owned by users, with a secret."""
    await db.create_resource(
        "notes",
        {
            "title": "string|required|maxlength:50",
            "roomId": "string|optional",
            "owner": "string|optional",
            "status": "string|optional",
            "score": "number|optional",
            "password": "string|optional",
            "profile": "json|optional",
            "items": "json|optional",
        },
        timestamps=True,
    )
