"""Cross-process channel message latency: a message sent on one server process reaches a member
connected to another through Redis or NATS; p50/p99 minus the same in one process (the local
broker).

Each server is a child process (``Database("memory://...", broker=...)`` + ``WebSocketPlugin``
with ``channels``); the sender calls ``await ws.broadcast(...)`` at a paced rate well below
capacity with ``time.monotonic_ns()`` in the data, and a member joined on the receiving process
(a client in this process; CLOCK_MONOTONIC is system-wide) takes the difference on arrival.
One process: the member and the sender on the same server, local broker. Also measured (extra):
the same through a channel with ``history`` (its messages go through the broker's per-channel
stream even in one process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

import aiohttp
import structlog

from .harness import Result, Stat, Target, percentile, spawn
from .scaleout import services

CHANNELS = {"bench:*": {"anonymous": True}, "hist:*": {"anonymous": True, "history": 100}}


def node_main(conn: Any, broker: str, name: str) -> None:
    """A server process: ``("send", channel, count, rate)`` broadcasts paced messages."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def main() -> None:
        from s3db_core import Database
        from s3db_ws_plugin import WebSocketPlugin

        db = Database(f"memory://{name}-{os.getpid()}", broker=broker)
        await db.connect()
        plugin = WebSocketPlugin(port=0, channels=CHANNELS, heartbeat_interval=None)
        await db.use_plugin(plugin)
        conn.send({"port": plugin.port})
        loop = asyncio.get_running_loop()
        while True:
            cmd, *args = await loop.run_in_executor(None, conn.recv)
            if cmd == "stop":
                await db.disconnect()
                conn.send("stopped")
                return
            channel, count, rate = args
            t0 = time.monotonic()
            for seq in range(count):
                delay = t0 + seq / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await plugin.broadcast(channel, "message", {"seq": seq, "sent": time.monotonic_ns()})
            conn.send("sent")

    asyncio.run(main())


async def _receive(port: int, channel: str, count: int, send: Any) -> list[float]:
    """Join ``channel`` on the server at ``port``, have ``send()`` start the sender, and collect
    each message's latency (ms)."""
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{port}/") as ws:
            await ws.receive_json(timeout=30)  # connected
            await ws.send_json({"type": "join", "channel": channel})
            answer = await ws.receive_json(timeout=30)
            assert answer["type"] == "channel:joined", answer
            await asyncio.sleep(0.3)  # the other processes know of the member (ephemeral bus)
            await asyncio.get_running_loop().run_in_executor(None, send)
            while len(latencies) < count:
                msg = await ws.receive_json(timeout=30)
                if msg.get("type") == "event" and msg.get("channel") == channel:
                    latencies.append((time.monotonic_ns() - msg["data"]["sent"]) / 1e6)
    return latencies


def _measure(broker: str, cross: bool, channel: str, count: int, rate: float) -> list[float]:
    with contextlib.ExitStack() as stack:
        receiver = stack.enter_context(spawn(node_main, broker, "lat-a"))
        port = receiver.recv()["port"]
        sender = receiver
        if cross:
            sender = stack.enter_context(spawn(node_main, broker, "lat-b"))
            sender.recv()
        try:
            result: list[float] = []
            for n in (max(5, count // 10), count):  # a warm-up, then the measurement

                def go(n: int = n) -> None:
                    sender.send(("send", channel, n, rate))

                result = asyncio.run(_receive(port, channel, n, go))
                sender.recv(timeout=60)
            return result
        finally:
            for child in {id(receiver): receiver, id(sender): sender}.values():
                with contextlib.suppress(Exception):
                    child.send(("stop",))
                    child.recv(timeout=10)


def run(quick: bool) -> list[Result]:
    count, rate = (40, 100.0) if quick else (400, 100.0)
    measured: dict[str, list[float]] = {}
    with services() as urls:
        for channel in ("bench:1", "hist:1"):
            measured[f"local {channel}"] = _measure("local", False, channel, count, rate)
            for engine in ("redis", "nats"):
                broker = f"{urls[engine]}?prefix=chlat{time.monotonic_ns()}"
                measured[f"{engine} {channel}"] = _measure(broker, True, channel, count, rate)

    def p(name: str, pct: float) -> float:
        return round(percentile(measured[name], pct), 3)

    rows = []
    for engine in ("redis", "nats"):
        extra = {
            f"{kind}_{pct}_ms": p(f"{where} {ch}", n)
            for kind, where, ch in (("cross", engine, "bench:1"), ("one_process", "local", "bench:1"),
                                    ("history_cross", engine, "hist:1"),
                                    ("history_one_process", "local", "hist:1"))
            for pct, n in (("p50", 50), ("p99", 99))
        }  # fmt: skip
        for pct, n, bound in (("p50", 50, 1.0), ("p99", 99, 5.0)):
            ours, base = p(f"{engine} bench:1", n), p("local bench:1", n)
            rows.append(
                Result(
                    name=f"channel message across processes via {engine}, {pct} minus one process",
                    params={"messages": count, "rate_per_s": rate},
                    unit="ms",
                    ours=Stat(ours, ours, ours, 1),
                    baseline=Stat(base, base, base, 1),
                    ratio=round(ours - base, 3),
                    ratio_of="ours - baseline (ms)",
                    target=Target("<=", bound),
                    extra=extra,
                    notes=["paced sends well below capacity; the machine is shared with other work"],
                )
            )
    return rows
