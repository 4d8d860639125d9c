"""Store requests for a typing burst of 100 messages: through a channel (0) beside the chat
example's typing indicators kept as records (what the seed does).

One server on ``memory://`` (its storage client counts every request) with the chat example's
resources, guards and cleanup, plus a ``room:*`` channel carrying ``typing``. A member sends 100
``channel:message {event: "typing"}`` over a real socket; then the same burst the seed's way:
100 ``insert typing_indicators`` (each guard reads the room) and the cleanup sweep that deletes
the expired indicators. The rate limits are lifted so both bursts complete as sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import jwt
import structlog

from .harness import Result, Stat, Target

BURST = 100
SECRET = "bench-secret-with-enough-bytes-for-hs256"


async def _measure(burst: int) -> tuple[dict[str, int], ...]:
    from examples.chat.app import define_resources, delete_expired_typing, resources_config
    from s3db_core import Database
    from s3db_ws_plugin import WebSocketPlugin
    from s3db_ws_plugin.client import Client

    db = Database(f"memory://chstore-{uuid.uuid4().hex[:8]}")
    await db.connect()
    try:
        await define_resources(db)
        room = await db.resources.chat_rooms.insert({"name": "general", "createdBy": "system"})
        plugin = WebSocketPlugin(
            port=0,
            auth={"required": True, "drivers": [{"driver": "jwt", "config": {"secret": SECRET}}]},
            resources=resources_config(db, typing_ttl=0.0),
            channels={"room:*": {"presence": True, "events": ["typing", "message"]}},
            rate_limit={"enabled": False},
            channel_rate_limit={"messages": 100_000, "updates": 100_000},
            heartbeat_interval=None,
        )
        await db.use_plugin(plugin)
        token = jwt.encode({"sub": "alice", "exp": time.time() + 3600}, SECRET, algorithm="HS256")
        counter = db.storage.requests
        async with Client(plugin.url, token=token) as alice:
            channel = await alice.join(f"room:{room['id']}", info={"name": "alice"})
            counter.reset()
            for n in range(burst):
                await channel.send("typing", {"on": n % 2 == 0})
            by_channel = counter.snapshot()
            counter.reset()
            for _ in range(burst):
                await alice.request({"type": "insert", "resource": "typing_indicators",
                                     "data": {"roomId": room["id"]}})  # fmt: skip
            inserts = counter.snapshot()
            await asyncio.sleep(0.01)  # every indicator has expired (ttl 0)
            await delete_expired_typing(db)  # the cleanup sweep
            by_records = counter.snapshot()
        sweep = {k: v - inserts.get(k, 0) for k, v in by_records.items() if v - inserts.get(k, 0)}
        return by_channel, by_records, inserts, sweep
    finally:
        await db.disconnect()


def run(quick: bool) -> list[Result]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    burst = 10 if quick else BURST
    by_channel, by_records, inserts, sweep = asyncio.run(_measure(burst))
    ours, base = sum(by_channel.values()), sum(by_records.values())
    return [
        Result(
            name=f"store requests for a typing burst of {burst}: channel vs records",
            params={"messages": burst, "store": "memory://"},
            unit="requests",
            ours=Stat(ours, ours, ours, 1),
            baseline=Stat(base, base, base, 1),
            ratio=float(ours),
            ratio_of="ours (requests)",
            target=Target("<=", 0),
            extra={"channel_by_kind": by_channel, "records_by_kind": by_records,
                   "records_inserts": inserts, "records_sweep": sweep},  # fmt: skip
            notes=["records: one insert per typing message (its guard reads the room) and the "
                   "cleanup sweep (a query, then a delete per expired indicator)"],
        )
    ]
