"""Channel fan-out: frames/s to 1,000 members of one channel vs a bare aiohttp broadcast.

Ours: a ``Database("memory://...")`` with a ``WebSocketPlugin`` declaring ``channels={"bench:*":
{"anonymous": True}}`` in a child process; every client socket joins ``bench:lobby`` and the
server sends each message with ``await ws.broadcast(...)`` (the path a client's
``channel:message`` takes after its checks: one serialization, one frame, every member's
socket). Baseline, in the same run: the bare aiohttp broadcaster of ``fanout`` sending a
pre-serialized frame of the same shape and size with ``await ws.send_str``. The load generator,
pacing and alternation are ``fanout``'s (see there).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import orjson
import structlog

from .fanout import (
    CONTENT,
    WINDOW_EVENTS,
    _pipe_commands,
    _write,
    client_bottleneck_note,
    rig,
)
from .harness import Result, Stat, Target, percentile, raise_fd_limit, serve_websocket

CHANNEL = "bench:lobby"


def _data(seq: int, sent: int) -> dict[str, Any]:
    return {"content": CONTENT, "seq": seq, "sent": sent}


def _frame(seq: int, sent: int) -> bytes:
    """The frame a member receives (the baseline sends the same bytes' shape)."""
    return orjson.dumps({"type": "event", "channel": CHANNEL, "event": "message",
                         "data": _data(seq, sent), "from": {"clientId": None, "userId": None},
                         "timestamp": int(time.time() * 1000)})  # fmt: skip


def server_main(conn: Any, kind: str, progress: Any, slots: list[int], name: str) -> None:
    """Server process: ``kind`` "ours" (channels) or "bare" (aiohttp)."""
    raise_fd_limit(65536)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue = _pipe_commands(conn, loop)
        if kind == "ours":
            from s3db_core import Database
            from s3db_ws_plugin import WebSocketPlugin

            db = Database(f"memory://bench-{name}-{os.getpid()}")
            await db.connect()
            plugin = WebSocketPlugin(port=0, channels={"bench:*": {"anonymous": True}})
            await db.use_plugin(plugin)
            port = plugin.port

            async def publish(seq: int, sent: int, room: str) -> None:
                await plugin.broadcast(CHANNEL, "message", _data(seq, sent))

            def connections() -> int:
                return len(plugin.connections)

            async def close() -> None:
                await db.disconnect()
        else:
            from aiohttp import web

            sockets: set[web.WebSocketResponse] = set()

            async def handler(request: web.Request) -> web.WebSocketResponse:
                ws = web.WebSocketResponse(heartbeat=30.0)
                await ws.prepare(request)
                sockets.add(ws)
                try:
                    await ws.send_str('{"type":"connected"}')
                    async for _ in ws:
                        await ws.send_str('{"type":"channel:joined"}')
                finally:
                    sockets.discard(ws)
                return ws

            runner, port = await serve_websocket(handler)

            async def publish(seq: int, sent: int, room: str) -> None:
                frame = _frame(seq, sent).decode()
                for ws in list(sockets):
                    await ws.send_str(frame)

            def connections() -> int:
                return len(sockets)

            async def close() -> None:
                await runner.cleanup()

        conn.send({"port": port, "pid": os.getpid()})
        while True:
            cmd, *args = await queue.get()
            if cmd == "stop":
                await close()
                return
            if cmd == "burst":
                (burst,) = args
                cpu0 = time.process_time()
                conn.send({"cpu0": cpu0, "start_ns": time.monotonic_ns(), "fanout0": (0.0, 0.0)})
                await _write(publish, progress, slots, burst)
                conn.send({"written_ns": time.monotonic_ns()})
            elif cmd == "stats":
                conn.send({"cpu": time.process_time(), "fanout": (0.0, 0.0),
                           "connections": connections()})  # fmt: skip

    asyncio.run(main())


def run(quick: bool) -> list[Result]:
    clients = 50 if quick else 1000
    events = 20 if quick else 60
    reps = 2 if quick else 9
    sample_every = 1 if quick else 25
    join = orjson.dumps({"type": "join", "channel": CHANNEL})
    setups = [[join] for _ in range(clients)]
    kinds = ["ours", "bare"]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    with rig(kinds, "chfan", server_main) as r:
        for g in range(len(kinds)):
            r.connect(g, setups, sample_every)
        per_proc = [len(s) for s in r.shares[0]]
        burst = {"events": events, "frames_per_event": clients, "window": WINDOW_EVENTS,
                 "rooms": [CHANNEL]}  # fmt: skip

        def one(g: int, b: dict[str, Any]) -> dict[str, Any]:
            return r.burst(g, b, [n * b["events"] for n in per_proc], 60.0)

        for g in range(len(kinds)):  # warm-up
            one(g, {**burst, "events": max(5, events // 5)})
        for rep in range(reps):
            for kind in kinds if rep % 2 == 0 else kinds[::-1]:
                runs[kind].append(one(kinds.index(kind), burst))

    def rate(x: dict[str, Any]) -> float:
        return x["frames"] / x["wall"]

    extra: dict[str, Any] = {}
    for kind, label in (("ours", "ours"), ("bare", "baseline")):
        loaded = [v / 1e6 for x in runs[kind] for v in x["latencies"]]
        extra[f"{label}_server_cpu_us_per_frame"] = round(
            Stat.of(x["server_cpu"] / x["frames"] * 1e6 for x in runs[kind]).median, 2
        )
        extra[f"{label}_loaded_latency_p50_ms"] = round(percentile(loaded, 50), 3)
        extra[f"{label}_loaded_latency_p99_ms"] = round(percentile(loaded, 99), 3)
    extra["paired_ratio_median"] = round(
        Stat.of(rate(a) / rate(b) for a, b in zip(runs["ours"], runs["bare"], strict=True)).median, 3
    )
    notes = [client_bottleneck_note(runs[k], label) for k, label in (("ours", "ours"),
                                                                      ("bare", "baseline"))]  # fmt: skip
    for kind in kinds:
        bad = [x for x in runs[kind] if x["frames"] != x["expected"]]
        if bad:
            notes.append(f"{kind}: {len(bad)} burst(s) delivered fewer frames than expected")
    return [
        Result(
            name="channel_fanout",
            params={"members": clients, "events_per_burst": events, "window_events": WINDOW_EVENTS,
                    "frame_bytes": len(_frame(0, time.monotonic_ns()))},  # fmt: skip
            unit="frames/s",
            ours=Stat.of(rate(x) for x in runs["ours"]),
            baseline=Stat.of(rate(x) for x in runs["bare"]),
            target=Target(">=", 0.9),
            extra=extra,
            notes=notes,
        )
    ]
