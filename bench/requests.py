"""Request/response over the WebSocket on ``memory://``, against the same calls on the core.

get, ``list(limit=50)`` and insert per second with 1 and with 50 connections, each connection
a closed loop (one request outstanding: send, await the reply, send the next). The server
(Database + WebSocketPlugin) runs in one child process, the load generator in another, so the
clients do not steal the server's event loop; the baseline is the same operations called
directly on the core (``resource.get`` ...) by 1 or 50 concurrent tasks in a third process with
the same data. The ratio (socket ops/s over direct ops/s) shows what the protocol costs; the
issue sets no target for it.

The server's and the client process's CPU use during each run are compared: when the client
process is the busier one (near a full core while the server is not), the load generator, not
the server, limited the rate, and the row says so. The load generator of record is a raw
aiohttp client (one ``send_str`` and one ``receive`` per request): the product's ``Client``
(measured beside it, in ``extra`` and the notes) costs more CPU per request than the server
does for a ``get`` and became the bottleneck at 50 connections. Each row also gives the
server's CPU per request against the core's CPU per direct call, which stays meaningful when
other processes share the machine (the rates then drop; a note says how much CPU they took).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

from .core_vs_js import record
from .harness import Result, Stat, fmt, spawn

ATTRIBUTES = {
    "roomId": "string|required",
    "title": "string|required",
    "author": "string|required",
    "score": "number",
}
PARTITIONS = {"byRoom": {"fields": {"roomId": "string"}}}
RESOURCE = "items"
OPERATIONS = ("get", "list50", "insert")
LABELS = {"get": "get", "list50": "list(50)", "insert": "insert"}
CONCURRENCY = (1, 50)
CLIENTS = ("raw", "client")
STRIDE = 7919  # a prime: gets walk the seeded ids in a scattered order
BUSY = 0.85  # a process using this share of a core (or more) is saturated


def config(quick: bool) -> dict[str, Any]:
    if quick:
        return {"records": 200, "rooms": 4, "reps": 1, "seconds": 0.25, "direct_seconds": 0.1}
    return {"records": 1000, "rooms": 10, "reps": 3, "seconds": 0.8, "direct_seconds": 0.4}


async def _database(cfg: dict[str, Any]):
    """A fresh memory database holding ``records`` seeded items; (db, resource, ids)."""
    from s3db_core import Database

    db = Database(f"memory://bench-requests-{time.monotonic_ns()}/p")
    await db.connect()
    items = await db.create_resource(RESOURCE, ATTRIBUTES, partitions=PARTITIONS)
    ids = [(await items.insert(record(i, cfg["rooms"])))["id"] for i in range(cfg["records"])]
    return db, items, ids


# -- the server process -----------------------------------------------------------------------
def _server_main(conn: Any, cfg: dict[str, Any]) -> None:
    import logging

    import structlog

    from s3db_ws_plugin.plugin import WebSocketPlugin

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def main() -> None:
        db, _, ids = await _database(cfg)
        ws = WebSocketPlugin(port=0, resources={RESOURCE: True}, heartbeat_interval=None)
        await db.use_plugin(ws)
        conn.send({"url": ws.url, "ids": ids})
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to stop
        await db.disconnect()
        conn.send({"stopped": True})

    asyncio.run(main())


# -- the load generator process ---------------------------------------------------------------
class RawClient:
    """The leanest request loop aiohttp allows: serialize, send, receive one frame, parse."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.rid = 0

    @classmethod
    async def open(cls, session: Any, url: str) -> RawClient:
        import orjson

        ws = await session.ws_connect(url, max_msg_size=16 << 20, autoping=True)
        hello = orjson.loads((await ws.receive()).data)
        if hello.get("type") != "connected":
            raise RuntimeError(f"expected a connected frame, got {hello}")
        return cls(ws)

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        import orjson

        self.rid += 1
        frame["requestId"] = self.rid
        await self.ws.send_str(orjson.dumps(frame).decode())
        reply = orjson.loads((await self.ws.receive()).data)
        if reply.get("requestId") != self.rid or reply.get("type") == "error":
            raise RuntimeError(f"unexpected reply {str(reply)[:200]}")
        return reply


def _requests(kind: str, op: str, client: Any, ids: list[str], rooms: int):
    """A coroutine function ``call(n)`` doing the n-th request of ``op`` through ``client``."""
    if kind == "client":
        if op == "get":
            return lambda n: client.get(RESOURCE, ids[(n * STRIDE) % len(ids)])
        if op == "list50":
            return lambda n: client.list(RESOURCE, limit=50)
        return lambda n: client.insert(RESOURCE, record(n, rooms))
    if op == "get":
        return lambda n: client.request(
            {"type": "get", "resource": RESOURCE, "id": ids[(n * STRIDE) % len(ids)]}
        )
    if op == "list50":
        return lambda n: client.request({"type": "list", "resource": RESOURCE, "limit": 50})
    return lambda n: client.request(
        {"type": "insert", "resource": RESOURCE, "data": record(n, rooms)}
    )


async def _closed_loops(calls: list, seconds: float) -> tuple[int, float]:
    """Run every ``call`` in its own task back to back for ``seconds``; (completed, elapsed).

    Each loop checks the clock itself: a call on ``memory://`` may never suspend, so a timer
    task would never get to run.
    """
    done = [0] * len(calls)
    start = time.perf_counter()
    end = start + seconds

    async def loop(i: int, call) -> None:
        n = i * 1_000_003
        while time.perf_counter() < end:
            await call(n)
            n += 1
            done[i] += 1

    await asyncio.gather(*(loop(i, c) for i, c in enumerate(calls)))
    return sum(done), time.perf_counter() - start


def _client_main(conn: Any, url: str, ids: list[str], cfg: dict[str, Any]) -> None:
    import logging

    import aiohttp
    import structlog

    from s3db_ws_plugin.client import Client

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    width = max(CONCURRENCY)

    async def main() -> None:
        clients = [Client(url, heartbeat=None, reconnect=False) for _ in range(width)]
        await asyncio.gather(*(c.connect() for c in clients))
        session = aiohttp.ClientSession()
        raws = await asyncio.gather(*(RawClient.open(session, url) for _ in range(width)))
        pool = {"client": clients, "raw": raws}
        conn.send({"ready": True})
        loop = asyncio.get_running_loop()
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            if cmd is None:
                break
            calls = [
                _requests(cmd["kind"], cmd["op"], c, ids, cfg["rooms"])
                for c in pool[cmd["kind"]][: cmd["conns"]]
            ]
            await _closed_loops(calls, cmd["warmup"])
            conn.send({"started": True})
            count, elapsed = await _closed_loops(calls, cmd["seconds"])
            conn.send({"count": count, "elapsed": elapsed})
        await asyncio.gather(*(c.close() for c in clients))
        await asyncio.gather(*(r.ws.close() for r in raws))
        await session.close()

    asyncio.run(main())


# -- the direct-core process ------------------------------------------------------------------
def _direct_main(conn: Any, cfg: dict[str, Any]) -> None:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def main() -> dict[str, Any]:
        db, items, ids = await _database(cfg)
        rooms = cfg["rooms"]

        def call(op: str):
            if op == "get":
                return lambda n: items.get(ids[(n * STRIDE) % len(ids)])
            if op == "list50":
                return lambda n: items.list(limit=50)
            return lambda n: items.insert(record(n, rooms))

        out: dict[str, Any] = {}
        for op in OPERATIONS:
            for conns in CONCURRENCY:
                calls = [call(op)] * conns
                await _closed_loops(calls, cfg["direct_seconds"] / 2)
                rates, cpu_us = [], []
                for _ in range(cfg["reps"]):
                    cpu0 = time.process_time()
                    count, elapsed = await _closed_loops(calls, cfg["direct_seconds"])
                    rates.append(count / elapsed)
                    cpu_us.append((time.process_time() - cpu0) / max(count, 1) * 1e6)
                out[f"{op}/{conns}"] = rates
                out[f"{op}/{conns}/cpu_us"] = statistics.median(cpu_us)
        await db.disconnect()
        return out

    conn.send(asyncio.run(main()))


# -- the benchmark ----------------------------------------------------------------------------
def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _sample(server: Any, client: Any) -> tuple[float, float, tuple[float, float], float]:
    return server.cpu_seconds(), client.cpu_seconds(), machine_cpu(), time.perf_counter()


def _measure_socket(server: Any, client: Any, cmd: dict[str, Any], reps: int) -> dict[str, Any]:
    rates, server_util, client_util, server_us, others = [], [], [], [], []
    for _ in range(reps):
        client.send(cmd)
        client.recv(timeout=cmd["warmup"] + 60)
        s0, c0, m0, t0 = _sample(server, client)
        done = client.recv(timeout=cmd["seconds"] + 60)
        s1, c1, m1, t1 = _sample(server, client)
        rates.append(done["count"] / done["elapsed"])
        server_util.append((s1 - s0) / (t1 - t0))
        client_util.append((c1 - c0) / (t1 - t0))
        server_us.append((s1 - s0) / max(done["count"], 1) * 1e6)
        busy, total = m1[0] - m0[0], m1[1] - m0[1]
        # The share of the machine's CPU that neither of our two processes used.
        others.append(max(busy - (s1 - s0) - (c1 - c0), 0.0) / total if total else 0.0)
    return {
        "rates": rates,
        "server_cpu": statistics.median(server_util),
        "client_cpu": statistics.median(client_util),
        "server_us_per_req": statistics.median(server_us),
        "others": statistics.median(others),
    }


def bottleneck_note(server_cpu: float, client_cpu: float, others: float = 0.0) -> str:
    """Which side limited the rate, judged from each process's share of a core (``others``:
    the share of the whole machine that other processes used meanwhile)."""
    shares = f"server {server_cpu:.0%} of a core, client process {client_cpu:.0%}"
    if client_cpu >= BUSY and client_cpu > server_cpu:
        return f"client-bound: the load generator, not the server, was the bottleneck ({shares})"
    if server_cpu >= BUSY:
        return f"server-bound ({shares})"
    if others >= 0.25:
        return f"CPU-starved: other processes held {others:.0%} of the machine ({shares})"
    return f"latency-bound: neither process saturated ({shares})"


def run(quick: bool) -> list[Result]:
    cfg = config(quick)
    warmup = cfg["seconds"] / 4
    with spawn(_direct_main, cfg) as direct:
        baseline = direct.recv(timeout=120)

    measured: dict[tuple[str, str, int], dict[str, Any]] = {}
    with spawn(_server_main, cfg) as server:
        info = server.recv(timeout=120)
        with spawn(_client_main, info["url"], info["ids"], cfg) as client:
            client.recv(timeout=120)
            for op in OPERATIONS:
                for conns in CONCURRENCY:
                    for kind in CLIENTS:
                        cmd = {
                            "kind": kind,
                            "op": op,
                            "conns": conns,
                            "seconds": cfg["seconds"],
                            "warmup": warmup,
                        }
                        measured[(op, kind, conns)] = _measure_socket(
                            server, client, cmd, cfg["reps"]
                        )
            client.send(None)
            client.process.join(30)
        server.send(None)
        server.recv(timeout=30)

    results = []
    for op in OPERATIONS:
        for conns in CONCURRENCY:
            raw, main = measured[(op, "raw", conns)], measured[(op, "client", conns)]
            client_stat = Stat.of(main["rates"])
            direct = Stat.of(baseline[f"{op}/{conns}"])
            direct_us = baseline[f"{op}/{conns}/cpu_us"]
            notes = [
                f"raw client: {bottleneck_note(raw['server_cpu'], raw['client_cpu'], raw['others'])};"
                f" server CPU {raw['server_us_per_req']:.0f} us/request vs {direct_us:.0f} us/call"
                " direct",
                f"product Client: {client_stat} req/s (ratio {fmt(client_stat.median / direct.median)}),"
                f" {bottleneck_note(main['server_cpu'], main['client_cpu'], main['others'])}",
            ]
            others = max(main["others"], raw["others"])
            if others > 0.1:
                notes.append(
                    f"machine busy: other processes used {others:.0%} of all CPUs during the runs"
                )
            results.append(
                Result(
                    name=f"socket {LABELS[op]} vs direct core, {conns} conn",
                    params={
                        "store": "memory://",
                        "op": op,
                        "connections": conns,
                        "records": cfg["records"],
                        "seconds": cfg["seconds"],
                        "reps": cfg["reps"],
                        "client": "raw aiohttp (RawClient); Client in extra",
                    },
                    unit="req/s",
                    ours=Stat.of(raw["rates"]),
                    baseline=direct,
                    ratio_of="socket req/s / direct core calls/s",
                    extra={
                        "server_cpu": round(raw["server_cpu"], 3),
                        "client_cpu": round(raw["client_cpu"], 3),
                        "server_cpu_us_per_request": round(raw["server_us_per_req"], 1),
                        "direct_cpu_us_per_call": round(direct_us, 1),
                        "other_processes_cpu_share": round(others, 3),
                        "product_client": {
                            "median": client_stat.median,
                            "min": client_stat.min,
                            "max": client_stat.max,
                            "ratio": client_stat.median / direct.median,
                            "server_cpu": round(main["server_cpu"], 3),
                            "client_cpu": round(main["client_cpu"], 3),
                            "server_cpu_us_per_request": round(main["server_us_per_req"], 1),
                        },
                    },
                    notes=notes,
                )
            )
    return results
