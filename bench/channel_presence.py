"""Presence: members joining one channel with ``presence``: time and memory per member.

A server process (``Database("memory://...")`` + ``WebSocketPlugin`` with
``channels={"room:*": {"anonymous": True, "presence": True}}``) and two client processes (the
``fanout`` load generator's raw sockets) that first open every socket, then send every socket's
``join`` to ``room:lobby`` at once. Per member: the time until the server lists every member,
and the server's memory (RSS) after minus before. Each join sends ``member_added`` to every
member already there and answers the member list, so joining N members costs O(N^2) frames and
bytes in all: the time per member grows with the channel, and is reported at that size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

import orjson
import structlog

from .fanout import Group, _pipe_commands, client_frame, open_sockets
from .harness import Result, Stat, raise_fd_limit, rss_bytes, spawn

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
            # The last members' replies list thousands of members, and every member is sent
            # one member_added per later join: more than the default 1 MiB may wait per socket.
            max_queue_bytes=16 << 20,
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


def clients_main(conn: Any, port: int, count: int) -> None:
    """Client process: open ``count`` sockets, then on "join" send each one's join frame."""
    raise_fd_limit(65536)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        group = Group([0], 0)
        sockets = await open_sockets(group, "127.0.0.1", port, [[] for _ in range(count)], count + 1)
        conn.send({"connected": len(sockets)})
        await loop.run_in_executor(None, conn.recv)
        frame = client_frame(orjson.dumps({"type": "join", "channel": CHANNEL}))
        for sock in sockets:
            assert sock.transport is not None
            sock.transport.write(frame)
        conn.send({"sent": len(sockets)})
        await loop.run_in_executor(None, conn.recv)  # stop

    asyncio.run(main())


def _stats(server: Any, timeout: float = 900.0) -> dict[str, Any]:
    server.send(("stats",))  # answered once the server's loop gets to it: late while joins run
    return server.recv(timeout=timeout)


def run(quick: bool) -> list[Result]:
    members = 200 if quick else 5000
    procs = 2
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(spawn(server_main, "presence", [0], [0], "presence"))
        port = server.recv()["port"]
        clients = [stack.enter_context(spawn(clients_main, port, members // procs))
                   for _ in range(procs)]  # fmt: skip
        for c in clients:
            c.recv(timeout=300)
        time.sleep(0.5)
        before = _stats(server)
        t0 = time.monotonic()
        for c in clients:
            c.send("join")
        for c in clients:
            c.recv(timeout=60)
        deadline = t0 + (60 if quick else 900)
        while (after := _stats(server))["members"] < members:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{after['members']} of {members} members joined in time")
            time.sleep(0.05)
        joined_s = time.monotonic() - t0
        time.sleep(1.0)
        settled = _stats(server)
        for c in clients:
            c.send("stop")
        server.send(("stop",))
    per_member_ms = joined_s / members * 1000
    per_member_bytes = (settled["rss"] - before["rss"]) / members
    return [
        Result(
            name=f"presence: {members} members joining one channel, time per member",
            params={"members": members, "client_processes": procs},
            unit="ms",
            ours=Stat(per_member_ms, per_member_ms, per_member_ms, 1),
            extra={"all_joined_s": round(joined_s, 3),
                   "server_cpu_s": round(after["cpu"] - before["cpu"], 2),
                   "connections": before["connections"]},  # fmt: skip
            notes=["every socket connected first, then all joins sent at once; each join is"
                   " answered with the member list and announced to every member: O(N^2) frames"
                   " for N joins"],
        ),
        Result(
            name=f"presence: {members} members joining one channel, memory per member",
            params={"members": members},
            unit="bytes",
            ours=Stat(per_member_bytes, per_member_bytes, per_member_bytes, 1),
            extra={"rss_before": before["rss"], "rss_after": settled["rss"]},
            notes=["server RSS one second after the last join minus before the first, same sockets"],
        ),
    ]
