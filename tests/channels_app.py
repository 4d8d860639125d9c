"""The app the cross-process channel tests run: ``s3db serve channels_app:make`` (cwd: tests/).

Configuration from the environment: ``S3DB_APP_STORE``, ``S3DB_APP_BROKER``, ``S3DB_APP_PORT``
and ``S3DB_PRESENCE_TIMEOUT`` (seconds). Beside the socket: ``GET /presence?channel=NAME``
answers ``ws.presence(NAME)``, ``POST /broadcast?channel=NAME&event=EVENT`` (JSON body: the
data) calls ``ws.broadcast``.
"""

from __future__ import annotations

import os

from aiohttp import web
from ws_helpers import JWT_AUTH

from s3db_core import Database
from s3db_ws_plugin import WebSocketPlugin


async def make() -> Database:
    db = Database(os.environ["S3DB_APP_STORE"], broker=os.environ["S3DB_APP_BROKER"])
    await db.connect()
    plugin: WebSocketPlugin

    async def worker(request: web.Request) -> web.Response:
        return web.json_response({"worker": 0, "connections": len(plugin.connections)})

    async def presence(request: web.Request) -> web.Response:
        return web.json_response(await plugin.presence(request.query["channel"]))

    async def broadcast(request: web.Request) -> web.Response:
        q = request.query
        await plugin.broadcast(q["channel"], q["event"], await request.json())
        return web.json_response({"ok": True})

    plugin = WebSocketPlugin(
        port=int(os.environ["S3DB_APP_PORT"]),
        auth=JWT_AUTH,
        channels={"room:*": {"presence": True}, "chat:*": True, "hist:*": {"history": 50}},
        presence_timeout=float(os.environ.get("S3DB_PRESENCE_TIMEOUT", "30")),
        heartbeat_interval=None,
        routes=[
            web.get("/worker", worker),
            web.get("/presence", presence),
            web.post("/broadcast", broadcast),
        ],
    )
    await db.use_plugin(plugin)
    return db
