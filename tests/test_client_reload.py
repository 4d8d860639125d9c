"""A subscription's ``on_reload`` coroutine runs to its end: the client keeps a reference to its
task (the event loop keeps only weak ones, so an unreferenced task waiting on a future nothing
else holds is garbage-collected mid-flight), and a callback that fails is logged."""

from __future__ import annotations

import asyncio
import gc
import uuid
import weakref
from typing import Any

from structlog.testing import capture_logs
from ws_helpers import notes_resource

from s3db_core import Database
from s3db_ws_plugin import WebSocketPlugin
from s3db_ws_plugin.client import Client, Subscription

GONE = {"offset": 1, "epoch": "an-epoch-this-server-never-had"}  # not recoverable: reload


async def test_an_async_on_reload_survives_garbage_collection_and_a_failing_one_is_logged():
    db = Database(f"memory://reload-{uuid.uuid4().hex[:12]}")
    await db.connect()
    try:
        await notes_resource(db)
        plugin = WebSocketPlugin(port=0, heartbeat_interval=None, resources={"notes": {}})
        await db.use_plugin(plugin)
        waiting: list[weakref.ref[asyncio.Future[None]]] = []
        started, finished = asyncio.Event(), asyncio.Event()

        async def reload_slowly(sub: Subscription) -> None:
            never = asyncio.get_running_loop().create_future()  # held by this task alone
            waiting.append(weakref.ref(never))
            started.set()
            await never
            finished.set()

        async def reload_and_fail(sub: Subscription) -> Any:
            raise RuntimeError("the app's reload failed")

        async with Client(plugin.url) as client:
            sub = await client.subscribe("notes", since=GONE, on_reload=reload_slowly)
            assert (await sub.next(timeout=5)).is_reload
            await asyncio.wait_for(started.wait(), 5)
            for _ in range(3):
                gc.collect()
                await asyncio.sleep(0)
            future = waiting[0]()
            assert future is not None, "the on_reload task was garbage-collected mid-flight"
            future.set_result(None)
            del future
            await asyncio.wait_for(finished.wait(), 5)

            with capture_logs() as logs:
                failing = await client.subscribe(
                    "notes", filter={"title": "x"}, since=GONE, on_reload=reload_and_fail
                )
                assert (await failing.next(timeout=5)).is_reload
                for _ in range(20):
                    if any(e["event"] == "on_reload callback failed" for e in logs):
                        break
                    await asyncio.sleep(0.05)
            failed = [e for e in logs if e["event"] == "on_reload callback failed"]
            assert failed and failed[0]["resource"] == "notes"
    finally:
        await db.disconnect()
