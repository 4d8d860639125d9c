"""The app the scale-out tests run in separate processes.

    s3db serve scaleout_app:make [--workers N]        # a server process (cwd: tests/)
    python scaleout_app.py write COUNT [PREFIX]       # a plain writer process: inserts, then exits
    python scaleout_app.py race ID COUNT              # a writer updating one record COUNT times

Configuration from the environment: ``S3DB_APP_STORE`` (a store URL every process shares),
``S3DB_APP_BROKER`` (the broker URL), ``S3DB_APP_PORT``. ``GET /worker`` answers which worker
process served the request and how many sockets it holds.
"""

from __future__ import annotations

import asyncio
import os
import sys

from aiohttp import web

from s3db_core import ConflictError, Database
from s3db_ws_plugin import WebSocketPlugin

NOTES = {"title": "string|required", "roomId": "string|optional", "n": "number|optional"}


async def open_db() -> Database:
    db = Database(os.environ["S3DB_APP_STORE"], broker=os.environ.get("S3DB_APP_BROKER", "local"))
    await db.connect()
    await db.create_resource("notes", NOTES, timestamps=True)
    return db


async def make() -> Database:
    db = await open_db()
    plugin: WebSocketPlugin

    async def worker(request: web.Request) -> web.Response:
        index = int(os.environ.get("S3DB_WORKER_INDEX", "0"))
        return web.json_response({"worker": index, "connections": len(plugin.connections)})

    plugin = WebSocketPlugin(
        port=int(os.environ.get("S3DB_APP_PORT", "0")),
        resources={"notes": True},
        heartbeat_interval=None,
        routes=[web.get("/worker", worker)],
    )
    await db.use_plugin(plugin)
    return db


async def write(count: int, prefix: str) -> None:
    db = await open_db()
    try:
        for n in range(count):
            await db.resources.notes.insert({"title": f"{prefix}{n}", "roomId": "r1", "n": n})
    finally:
        await db.disconnect()


async def race(record_id: str, count: int) -> None:
    db = await open_db()
    notes = db.resources.notes
    try:
        done = 0
        while done < count:
            try:  # the patch is recomputed from the record each attempt finds (compare-and-set)
                await notes.update(record_id, lambda current: {"n": current.get("n", 0) + 1})
            except ConflictError:
                continue
            done += 1
    finally:
        await db.disconnect()


if __name__ == "__main__":
    if sys.argv[1] == "write":
        asyncio.run(write(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "w"))
    elif sys.argv[1] == "race":
        asyncio.run(race(sys.argv[2], int(sys.argv[3])))
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
