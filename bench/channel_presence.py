"""Presence: members joining one channel with ``presence``: time and memory per member.

Two server processes alike (``Database("memory://...")`` + ``WebSocketPlugin`` with
``channels={"room:*": {"anonymous": True, "presence": True}}``), each given the same number of
WebSocket connections by the ``fanout`` load generator; on one every socket also joins
``room:lobby``. Per member: the time the joins added to opening the sockets, and the memory
(RSS) the joined server holds beyond the other one. Each join sends ``member_added`` to every
member already there and answers the member list, so joining N members costs O(N^2) frames and
bytes in all: the time per member grows with the channel, and is reported at that size.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import orjson
import structlog

from .fanout import _pipe_commands, rig
from .harness import Result, Stat, raise_fd_limit, rss_bytes

CHANNEL = "room:lobby"


def server_main(conn: Any, kind: str, progress: Any, slots: list[int], name: str) -> None:
    raise_fd_limit(65536)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def main() -> None:
        from s3db_core import Database
        from s3db_ws_plugin import WebSocketPlugin

        queue = _pipe_commands(conn, asyncio.get_running_loop())
        db = Database(f"memory://bench-{name}-{os.getpid()}")
        await db.connect()
        plugin = WebSocketPlugin(
            port=0,
            channels={"room:*": {"anonymous": True, "presence": True}},
            max_connections_per_ip=None,
        )
        await db.use_plugin(plugin)
        conn.send({"port": plugin.port, "pid": os.getpid()})
        while True:
            cmd, *_ = await queue.get()
            if cmd == "stop":
                await db.disconnect()
                return
            if cmd == "stats":
                members = len(await plugin.presence(CHANNEL))
                conn.send({"cpu": time.process_time(), "fanout": (0.0, 0.0), "rss": rss_bytes(),
                           "connections": len(plugin.connections), "members": members})  # fmt: skip

    asyncio.run(main())


def _stats(r: Any, g: int) -> dict[str, Any]:
    r.servers[g].send(("stats",))
    return r.servers[g].recv()


def run(quick: bool) -> list[Result]:
    members = 200 if quick else 5000
    join = orjson.dumps({"type": "join", "channel": CHANNEL})
    with rig(["plain", "presence"], "presence", server_main) as r:
        t0 = time.monotonic()
        r.connect(0, [[] for _ in range(members)], members + 1)
        plain_s = time.monotonic() - t0
        t0 = time.monotonic()
        r.connect(1, [[join] for _ in range(members)], members + 1)
        joined_s = time.monotonic() - t0
        time.sleep(0.5)
        plain, joined = _stats(r, 0), _stats(r, 1)
    if joined["members"] != members:
        raise RuntimeError(f"{joined['members']} members listed, {members} expected")
    per_member_ms = max(0.0, joined_s - plain_s) / members * 1000
    per_member_bytes = (joined["rss"] - plain["rss"]) / members
    return [
        Result(
            name=f"presence: {members} members joining one channel, time per member",
            params={"members": members, "client_processes": 2},
            unit="ms",
            ours=Stat(per_member_ms, per_member_ms, per_member_ms, 1),
            extra={"open_sockets_s": round(plain_s, 3), "open_and_join_s": round(joined_s, 3),
                   "server_cpu_joined_s": round(joined["cpu"], 2),
                   "server_cpu_plain_s": round(plain["cpu"], 2)},  # fmt: skip
            notes=["each join is answered with the member list and announced to every member:"
                   " O(N^2) frames for N joins"],
        ),
        Result(
            name=f"presence: {members} members joining one channel, memory per member",
            params={"members": members},
            unit="bytes",
            ours=Stat(per_member_bytes, per_member_bytes, per_member_bytes, 1),
            extra={"rss_joined": joined["rss"], "rss_plain": plain["rss"]},
            notes=["RSS of the server whose sockets joined minus the one whose sockets did not"],
        ),
    ]
