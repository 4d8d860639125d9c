"""Scale-out and resume, against real Redis and NATS servers started for the run.

(a) Fan-out with two server processes on one port (``SO_REUSEPORT``, as ``s3db serve --workers
    2`` runs them) vs one process, same subscribers, same writer process publishing through
    Redis: frames delivered per second, target >= 1.6x (on 2 cores).
(b) Insert-to-event latency across processes (writer process -> broker -> server process ->
    socket) through Redis and through NATS, minus the same path in one process with the
    in-process ``local`` broker (writer inside the server): p50 and p99, targets <= 1 ms and
    <= 5 ms of added latency.
(c) Resume: a server process killed with SIGKILL and restarted on the same port while a writer
    process keeps writing; every subscriber (the product's Python client, resuming by itself)
    must get every change exactly once: lost and duplicated changes are counted (target 0).

Clients are the raw-asyncio readers of ``fanout`` (rows a and b) in their own processes;
CLOCK_MONOTONIC is system-wide, so a latency is the receiver's clock minus the writer's.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import structlog

from .fanout import (
    ATTRIBUTES,
    CLIENT_PROCS,
    CONTENT,
    RESOURCE,
    _ctx,
    _pipe_commands,
    _write,
    clients_main,
    machine_busy_seconds,
)
from .harness import Result, Stat, Target, free_port, percentile, raise_fd_limit, spawn

# The shared brokers whose engine is installed (both, once the NATS engine is in).
ENGINES = [e for e in ("redis", "nats") if importlib.util.find_spec(f"s3db_core.brokers.{e}")]
SUBSCRIBE = orjson.dumps({"type": "subscribe", "resource": RESOURCE})


@contextlib.contextmanager
def services() -> Iterator[dict[str, str]]:
    """Redis and NATS (``tests/services.py``, as the test suite starts them) for the run."""
    path = Path(__file__).resolve().parent.parent / "tests" / "services.py"
    module = sys.modules.get("services")
    if module is None:
        spec = importlib.util.spec_from_file_location("services", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["services"] = module
        spec.loader.exec_module(module)
    redis = module.start_redis()
    try:
        nats = module.start_nats()
        try:
            yield {"redis": redis.url, "nats": nats.url}
        finally:
            nats.stop()
    finally:
        redis.stop()


def _quiet() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


async def _open(broker: str, name: str) -> Any:
    from s3db_core import Database

    db = Database(f"memory://{name}", broker=broker)
    await db.connect()
    await db.create_resource(name=RESOURCE, attributes=ATTRIBUTES, timestamps=True)
    return db


def server_main(
    conn: Any, port: int, broker: str, workers: int, progress: Any, slots: list[int]
) -> None:
    """A server process on ``port`` (sharing it when ``workers`` > 1); it writes itself on
    ``burst`` (the in-process baseline)."""
    raise_fd_limit(65536)
    _quiet()
    if workers > 1:
        os.environ["S3DB_WORKERS"] = str(workers)  # what ``s3db serve --workers`` sets

    async def main() -> None:
        from s3db_ws_plugin import WebSocketPlugin

        loop = asyncio.get_running_loop()
        queue = _pipe_commands(conn, loop)
        db = await _open(broker, f"bench-scale-{os.getpid()}")
        plugin = WebSocketPlugin(port=port, resources={RESOURCE: True}, heartbeat_interval=None)
        await db.use_plugin(plugin)
        resource = db.resources[RESOURCE]
        conn.send({"port": plugin.port, "pid": os.getpid()})
        while True:
            cmd, *args = await queue.get()
            if cmd == "stop":
                await db.disconnect()
                return
            if cmd == "burst":
                (burst,) = args

                async def publish(seq: int, sent: int, room: str) -> None:
                    await resource.insert(
                        {"roomId": room, "content": CONTENT, "seq": seq, "sent": sent}
                    )

                conn.send({"start_ns": time.monotonic_ns()})
                await _write(publish, progress, slots, burst)
                conn.send({"written_ns": time.monotonic_ns()})
            elif cmd == "stats":
                conn.send({"connections": len(plugin.connections), "cpu": time.process_time()})

    asyncio.run(main())


def writer_main(conn: Any, broker: str, progress: Any, slots: list[int]) -> None:
    """A plain writer process: inserts through its own Database on the broker."""
    _quiet()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue = _pipe_commands(conn, loop)
        db = await _open(broker, f"bench-writer-{os.getpid()}")
        resource = db.resources[RESOURCE]
        conn.send("ready")
        while True:
            cmd, *args = await queue.get()
            if cmd == "stop":
                await db.disconnect()
                return
            (burst,) = args

            async def publish(seq: int, sent: int, room: str) -> None:
                await resource.insert(
                    {"roomId": room, "content": CONTENT, "seq": seq, "sent": sent}
                )

            conn.send({"start_ns": time.monotonic_ns()})
            await _write(publish, progress, slots, burst)
            conn.send({"written_ns": time.monotonic_ns()})

    asyncio.run(main())


class Rig:
    """Servers on one port, client processes, and the process that writes."""

    def __init__(self, stack: contextlib.ExitStack, broker: str, servers: int, writer: str) -> None:
        self.progress = _ctx.RawArray("q", CLIENT_PROCS)
        self.slots = list(range(CLIENT_PROCS))
        port = free_port()
        self.servers = []
        for _ in range(servers):
            child = stack.enter_context(
                spawn(server_main, port, broker, servers, self.progress, self.slots)
            )
            child.recv(timeout=60)
            self.servers.append(child)
        self.port = port
        self.clients = [
            stack.enter_context(spawn(clients_main, self.progress, p, 1))
            for p in range(CLIENT_PROCS)
        ]
        for c in self.clients:
            c.recv()
        if writer == "process":
            self.writer = stack.enter_context(spawn(writer_main, broker, self.progress, self.slots))
            self.writer.recv(timeout=60)
        else:
            self.writer = self.servers[0]

    def connect(self, count: int, sample_every: int) -> list[int]:
        per = [
            count * (p + 1) // CLIENT_PROCS - count * p // CLIENT_PROCS for p in range(CLIENT_PROCS)
        ]
        for p, c in enumerate(self.clients):
            c.send(("connect", 0, "127.0.0.1", self.port, [[SUBSCRIBE]] * per[p], sample_every))
        for c in self.clients:
            c.recv(timeout=120)
        spread = []
        for server in self.servers:
            server.send(("stats",))
            spread.append(server.recv()["connections"])
        if sum(spread) != count:
            raise RuntimeError(f"connections per server {spread}, expected {count} in all")
        self.per = per
        return spread

    def burst(self, burst: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        expected = [n * burst["events"] for n in self.per]
        nap = 0.0 if burst.get("rate") else 0.001
        for p, c in enumerate(self.clients):
            c.send(("arm", 0, expected[p], nap))
        for c in self.clients:
            c.recv()
        machine0 = machine_busy_seconds()
        self.writer.send(("burst", burst))
        started = self.writer.recv(timeout=timeout)
        self.writer.recv(timeout=timeout)
        for c in self.clients:
            c.send(("collect", 0, timeout))
        got = [c.recv(timeout=timeout + 10) for c in self.clients]
        wall = (max(r["last_ns"] for r in got) - started["start_ns"]) / 1e9
        return {
            "frames": sum(r["frames"] for r in got),
            "expected": sum(expected),
            "wall": wall,
            "machine_busy": machine_busy_seconds() - machine0,
            "latencies": [x for r in got for x in r["latencies"]],
        }

    def stop(self) -> None:
        for child in [
            *self.clients,
            *self.servers,
            *([self.writer] if self.writer not in self.servers else []),
        ]:
            with contextlib.suppress(Exception):
                child.send(("stop",))


# -- (a) fan-out, 2 processes vs 1 ---------------------------------------------------------------
def fanout_rows(urls: dict[str, str], quick: bool) -> list[Result]:
    sockets, events, rounds = (60, 20, 1) if quick else (1000, 100, 3)
    burst = {"events": events, "rooms": ["r1"], "frames_per_event": sockets, "window": 8}
    rates: dict[int, list[float]] = {1: [], 2: []}
    spreads: dict[int, list[int]] = {}
    busy: dict[int, list[float]] = {1: [], 2: []}
    cores = os.cpu_count() or 1
    for _ in range(rounds):
        for servers in (1, 2):
            prefix = f"fan{servers}x{time.monotonic_ns()}"
            broker = f"{urls['redis']}?prefix={prefix}"
            with contextlib.ExitStack() as stack:
                rig = Rig(stack, broker, servers, writer="process")
                try:
                    spreads[servers] = rig.connect(sockets, sample_every=sockets)
                    rig.burst({**burst, "events": max(5, events // 5)})  # warm up
                    out = rig.burst(burst)
                    if out["frames"] != out["expected"]:
                        raise RuntimeError(f"{out['frames']} frames of {out['expected']}")
                    rates[servers].append(out["frames"] / out["wall"])
                    busy[servers].append(out["machine_busy"] / (out["wall"] * cores))
                finally:
                    rig.stop()
    one, two = Stat.of(rates[1]), Stat.of(rates[2])
    return [
        Result(
            name="fan-out, 2 server processes on one port vs 1 (Redis broker)",
            params={"subscribers": sockets, "events": events, "rounds": rounds, "broker": "redis"},
            unit="frames/s",
            ours=two,
            baseline=one,
            target=Target(">=", 1.6),
            extra={"connections_per_process": spreads.get(2), "machine_busy_share": busy},
            notes=[
                f"the machine ({cores} cores) is shared with other workloads during this run; "
                "machine_busy_share is how busy all cores were during each burst",
                "one writer process publishes through Redis; both server processes read the "
                "same stream; the kernel spreads sockets over the processes (SO_REUSEPORT)",
            ],
        )
    ]


# -- (b) insert-to-event across processes ------------------------------------------------------
def latency_rows(urls: dict[str, str], quick: bool) -> list[Result]:
    events, rate, subscribers = (40, 100, 4) if quick else (400, 100, 10)
    burst = {
        "events": events,
        "rooms": ["r1"],
        "frames_per_event": subscribers,
        "window": 8,
        "rate": rate,
    }
    measured: dict[str, list[float]] = {}
    for name in ("local", *ENGINES):
        broker = "local" if name == "local" else f"{urls[name]}?prefix=lat{time.monotonic_ns()}"
        with contextlib.ExitStack() as stack:
            rig = Rig(stack, broker, 1, writer="server" if name == "local" else "process")
            try:
                rig.connect(subscribers, sample_every=1)
                rig.burst({**burst, "events": max(10, events // 10)})  # warm up
                out = rig.burst(burst)
                measured[name] = [x / 1e6 for x in out["latencies"]]  # ms
            finally:
                rig.stop()
    base50, base99 = percentile(measured["local"], 50), percentile(measured["local"], 99)
    rows = []
    for name in ENGINES:
        p50, p99 = percentile(measured[name], 50), percentile(measured[name], 99)
        for pct, ours, base, bound in (("p50", p50, base50, 1.0), ("p99", p99, base99, 5.0)):
            rows.append(
                Result(
                    name=f"insert-to-event across processes via {name}, {pct} minus in-process local",
                    params={"events": events, "rate_per_s": rate, "subscribers": subscribers},
                    unit="ms",
                    ours=Stat(ours, ours, ours, 1),
                    baseline=Stat(base, base, base, 1),
                    ratio=ours - base,
                    ratio_of="ours - baseline (ms)",
                    target=Target("<=", bound),
                    extra={
                        "samples": len(measured[name]),
                        "baseline_samples": len(measured["local"]),
                    },
                    notes=[
                        "paced writes well below capacity; the machine is shared with other workloads"
                    ],
                )
            )
    return rows


# -- (c) kill -9 and resume -------------------------------------------------------------------------
def subscribers_main(conn: Any, url: str, count: int) -> None:
    """``count`` product Clients subscribed to the resource, recording each event's ``seq``."""
    _quiet()

    async def main() -> None:
        from s3db_ws_plugin.client import Backoff, Client

        loop = asyncio.get_running_loop()
        queue = _pipe_commands(conn, loop)
        seen: list[list[int]] = [[] for _ in range(count)]
        reloads = [0] * count
        clients = [Client(url, backoff=Backoff(initial=0.05, maximum=0.5)) for _ in range(count)]

        async def read(i: int, sub: Any) -> None:
            async for event in sub:
                if event.is_reload:
                    reloads[i] += 1
                else:
                    seen[i].append(event.data["seq"])

        tasks = []
        for i, client in enumerate(clients):
            await client.connect()
            tasks.append(asyncio.create_task(read(i, await client.subscribe(RESOURCE))))
        conn.send("ready")
        while True:
            cmd, *args = await queue.get()
            if cmd == "stop":
                break
            if cmd == "wait":
                (total, timeout) = args
                end = loop.time() + timeout
                while loop.time() < end and any(len(set(s)) < total for s in seen):
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)  # anything repeated late shows up too
                conn.send(
                    {
                        "seen": seen,
                        "reloads": reloads,
                        "reconnects": [c.reconnects for c in clients],
                    }
                )
        for task in tasks:
            task.cancel()
        for client in clients:
            await client.close()

    asyncio.run(main())


def paced_writer_main(conn: Any, broker: str, total: int, rate: float) -> None:
    """A writer process inserting ``total`` records at ``rate`` per second, whatever happens."""
    _quiet()

    async def main() -> None:
        db = await _open(broker, "bench-resume")
        resource = db.resources[RESOURCE]
        conn.send("ready")
        t0 = time.monotonic()
        for seq in range(total):
            delay = t0 + seq / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await resource.insert(
                {"roomId": "r1", "content": CONTENT, "seq": seq, "sent": time.monotonic_ns()}
            )
        await db.disconnect()
        conn.send("done")

    asyncio.run(main())


def resume_rows(urls: dict[str, str], quick: bool) -> list[Result]:
    subscribers, total, rate = (5, 60, 100) if quick else (20, 600, 200)
    broker = f"{urls['redis']}?prefix=resume{time.monotonic_ns()}"
    port = free_port()
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(spawn(server_main, port, broker, 1, None, []))
        server.recv(timeout=60)
        subs = stack.enter_context(spawn(subscribers_main, f"ws://127.0.0.1:{port}/", subscribers))
        subs.recv(timeout=60)
        writer = stack.enter_context(spawn(paced_writer_main, broker, total, rate))
        writer.recv(timeout=60)
        time.sleep(total / rate / 3)  # a third of the writes go through the first server
        os.kill(server.pid, signal.SIGKILL)
        killed = time.monotonic()
        server.process.join(10)
        restarted = stack.enter_context(spawn(server_main, port, broker, 1, None, []))
        restarted.recv(timeout=60)
        downtime = time.monotonic() - killed
        writer.recv(timeout=total / rate + 60)
        subs.send(("wait", total, 60.0))
        report = subs.recv(timeout=90)
        subs.send(("stop",))
        restarted.send(("stop",))
    lost = sum(total - len(set(s)) for s in report["seen"])
    duplicated = sum(len(s) - len(set(s)) for s in report["seen"])
    in_order = all(s == sorted(s) for s in report["seen"])
    return [
        Result(
            name="resume after kill -9 of the server process (Redis broker): lost + duplicated",
            params={"subscribers": subscribers, "changes": total, "rate_per_s": rate},
            unit="changes",
            ours=Stat(lost + duplicated, lost + duplicated, lost + duplicated, 1),
            ratio=float(lost + duplicated),
            ratio_of="lost + duplicated over all subscribers",
            target=Target("<=", 0),
            extra={
                "lost": lost,
                "duplicated": duplicated,
                "delivered": sum(len(s) for s in report["seen"]),
                "expected": total * subscribers,
                "in_order": in_order,
                "reloads": sum(report["reloads"]),
                "reconnects": report["reconnects"],
                "downtime_s": round(downtime, 3),
            },
            notes=[
                "the writer keeps writing while the server is down; the product Python "
                "client resumes by itself (since its last position)"
            ],  # fmt: skip
        )
    ]


def run(quick: bool) -> list[Result]:
    with services() as urls:
        return [*fanout_rows(urls, quick), *latency_rows(urls, quick), *resume_rows(urls, quick)]
