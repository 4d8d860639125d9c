"""Fan-out: one writer, 1,000 subscribed WebSocket clients, change events delivered per second.

Ours: a real ``Database("memory://...")`` with a ``messages`` resource and a ``WebSocketPlugin``
(defaults as a user would leave them: heartbeat on, no auth), in a child process; the writer
inserts through the core in that same process, so the measured path is change hook -> fan-out ->
sockets. Baseline, in the same run: a bare aiohttp app whose broadcaster sends one
pre-serialized frame of the same shape and size to every socket with ``await ws.send_str``.

Clients are lean raw-asyncio WebSocket readers (they parse frame headers and count event frames)
in separate processes, each holding half of the sockets of both servers; ours and baseline bursts
alternate (and take turns going first) so background noise hits both alike. The writer keeps at
most ``WINDOW_EVENTS`` events in flight (clients publish their counts in shared memory), so
neither server buries slow readers under an unbounded backlog; during throughput bursts clients
pause ``NAP_SECONDS`` between polls so one read takes several frames (cheaper load generation).
Measured per burst: frames received / s (first write to last frame received; CLOCK_MONOTONIC is
system-wide), server CPU per delivered frame (the server's own CPU clock), client CPU, and how
busy the whole machine was, from which the notes say which side was the bottleneck. Latency
(write to receive, every frame) comes from a separate paced phase well below capacity; "loaded"
latency (a sample of sockets during the throughput bursts) is in ``extra`` too.

``filtered`` reuses the processes defined here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import structlog

from .harness import Result, Stat, Target, percentile, raise_fd_limit, serve_websocket, spawn

CLIENT_PROCS = 2
WINDOW_EVENTS = 8  # events the writer may have in flight beyond what clients have counted
NAP_SECONDS = 0.001  # clients' pause between polls during throughput bursts (not when pacing)
CONTENT = "x" * 120  # a chat-message-sized record: the event frame is ~380 bytes
RESOURCE = "messages"
ATTRIBUTES = {
    "roomId": "string|required",
    "content": "string|required",
    "seq": "number|required",
    "sent": "number|required",
}

_ctx = mp.get_context("spawn")


# -- the load generator: raw WebSocket readers ----------------------------------------------------
_DIGITS = re.compile(rb"\d+")
_EVENT_PREFIX = b'{"type":"event"'


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (RFC 6455 5.3) with an all-zero key, so the payload goes unchanged."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class Group:
    """The sockets of one process connected to one server, and what they have counted."""

    def __init__(self, progress: Any, slot: int) -> None:
        self.progress = progress
        self.slot = slot
        self.events = 0
        self.expected = 0
        self.done: asyncio.Future | None = None
        self.last_ns = 0
        self.latencies: list[int] = []
        self.sockets: list[WSReader] = []

    def arm(self, expected: int, loop: asyncio.AbstractEventLoop) -> None:
        self.events = 0
        self.expected = expected
        self.last_ns = 0
        self.latencies = []
        self.progress[self.slot] = 0
        self.done = loop.create_future()
        if expected <= 0:
            self.done.set_result(None)


class WSReader(asyncio.Protocol):
    """One client socket: handshake, then count event frames (and time a sample of them)."""

    def __init__(
        self, group: Group, host: str, port: int, setup: list[bytes], sample: bool
    ) -> None:
        self.group = group
        self.request = (
            f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.setup = setup  # frames to send once upgraded (subscribe)
        self.setup_left = 1 + len(setup)  # connected + one reply per setup frame
        self.sample = sample
        self.upgraded = False
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed during setup: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if b" 101 " not in buf[:end]:
                self.ready.set_exception(ConnectionError(buf[:end].decode(errors="replace")))
                self.transport.close()
                return
            self.upgraded = True
            pos = end + 4
            self.transport.write(b"".join(client_frame(f) for f in self.setup))
        group = self.group
        n = len(buf)
        events = 0
        while n - pos >= 2:
            size = buf[pos + 1] & 0x7F
            head = 2
            if size == 126:
                if n - pos < 4:
                    break
                size = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif size == 127:
                if n - pos < 10:
                    break
                size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            start = pos + head
            end = start + size
            if end > n:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 1:
                if buf.startswith(_EVENT_PREFIX, start):
                    events += 1
                    if self.sample:
                        at = buf.find(b'"sent":', start, end)
                        match = _DIGITS.match(buf, at + 7) if at >= 0 else None
                        if match is not None:  # not a presence event
                            group.latencies.append(time.monotonic_ns() - int(match.group()))
                elif self.setup_left:
                    self.setup_left -= 1
                    if not self.setup_left:
                        self.ready.set_result(None)
            elif opcode == 9:  # ping (heartbeat): answer pong
                self.transport.write(client_frame(buf[start:end], 0xA))
            elif opcode == 8:
                self.transport.write(client_frame(buf[start:end][:2], 0x8))
                self.transport.close()
            pos = end
        self.buf = buf[pos:] if pos < n else b""
        if events:
            group.events += events
            group.progress[group.slot] = group.events
            if group.events >= group.expected and group.done and not group.done.done():
                group.last_ns = time.monotonic_ns()
                group.done.set_result(None)


def _pipe_commands(conn: Any, loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
    """Commands from the parent, read by a thread (the pipe blocks) into an asyncio queue."""
    queue: asyncio.Queue = asyncio.Queue()

    def reader() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = ("stop",)
            loop.call_soon_threadsafe(queue.put_nowait, message)
            if message[0] == "stop":
                return

    threading.Thread(target=reader, daemon=True).start()
    return queue


async def open_sockets(
    group: Group, host: str, port: int, setups: list[list[bytes]], sample_every: int
) -> list[WSReader]:
    """Connect one socket per entry of ``setups`` (its subscribe frames), 64 at a time."""
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(64)

    async def open_one(i: int, setup: list[bytes]) -> WSReader:
        async with limit:
            proto = WSReader(group, host, port, setup, i % sample_every == 0)
            await loop.create_connection(lambda: proto, host, port)
            await asyncio.wait_for(proto.ready, 30)
            return proto

    return list(await asyncio.gather(*(open_one(i, s) for i, s in enumerate(setups))))


def clients_main(conn: Any, progress: Any, proc: int, groups: int) -> None:
    """Client process: ``connect``, ``expect``, ``stop`` commands from the parent."""
    raise_fd_limit(65536)
    nap_seconds = 0.0

    async def main() -> None:
        nonlocal nap_seconds
        loop = asyncio.get_running_loop()
        queue = _pipe_commands(conn, loop)
        by_group: dict[int, Group] = {}
        napping = asyncio.Event()

        async def napper() -> None:
            # While a burst runs, block the loop for a moment between polls: frames pile up in
            # the kernel and one read takes several of them, so the load generator spends less
            # CPU per frame and leaves the cores to the server under test.
            while True:
                await napping.wait()
                time.sleep(nap_seconds)
                await asyncio.sleep(0)

        nap_task = asyncio.create_task(napper())  # noqa: F841 (kept alive while main runs)
        conn.send("ready")
        while True:
            cmd, *args = await queue.get()
            if cmd == "stop":
                return
            if cmd == "connect":
                gid, host, port, setups, sample_every = args
                group = by_group[gid] = Group(progress, proc * groups + gid)
                group.sockets = await open_sockets(group, host, port, setups, sample_every)
                conn.send({"connected": len(group.sockets)})
            elif cmd == "arm":
                gid, expected, nap_seconds = args
                by_group[gid].arm(expected, loop)
                if nap_seconds:
                    napping.set()
                conn.send({"cpu": time.process_time()})
            elif cmd == "collect":
                gid, timeout = args
                group = by_group[gid]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(group.done), timeout)
                napping.clear()
                conn.send(
                    {
                        "frames": group.events,
                        "last_ns": group.last_ns or time.monotonic_ns(),
                        "latencies": group.latencies,
                        "cpu": time.process_time(),
                    }
                )

    asyncio.run(main())


# -- the servers ----------------------------------------------------------------------------------
def _fake_record(seq: int, sent: int, room: str) -> dict[str, Any]:
    """What ``insert`` returns for a message, for the baseline's frame (same shape and size)."""
    from s3db_core.ids import new_id

    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return {
        "id": new_id(),
        "roomId": room,
        "content": CONTENT,
        "seq": seq,
        "sent": sent,
        "createdAt": now,
        "updatedAt": now,
    }


async def _write(
    publish: Callable[[int, int, str], Any],
    progress: Any,
    slots: list[int],
    burst: dict[str, Any],
) -> None:
    """The writer: ``burst["events"]`` events, paced by a window or a fixed rate."""
    rooms = burst["rooms"]
    per_event = burst["frames_per_event"]
    window = burst["window"] * per_event
    rate = burst.get("rate")
    expected = 0
    t0 = time.monotonic()
    for seq in range(burst["events"]):
        if rate:
            delay = t0 + seq / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            while expected - sum(progress[i] for i in slots) > window:
                await asyncio.sleep(0.0005)
        room = rooms[seq % len(rooms)]
        await publish(seq, time.monotonic_ns(), room)
        expected += per_event
        await asyncio.sleep(0)  # let the loop run its I/O between events


def _fanout_totals(plugin: Any) -> tuple[float, float]:
    total = count = 0.0
    for metric in plugin.metrics.fanout_seconds.collect():
        for sample in metric.samples:
            if sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
    return total, count


def server_main(conn: Any, kind: str, progress: Any, slots: list[int], name: str) -> None:
    """Server process: ``kind`` "ours" (Database + WebSocketPlugin) or "bare" (aiohttp)."""
    raise_fd_limit(65536)
    # As deployed: no per-connection debug lines on a terminal.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue = _pipe_commands(conn, loop)
        plugin: Any = None
        if kind == "ours":
            from s3db_core import Database
            from s3db_ws_plugin import WebSocketPlugin

            db = Database(f"memory://bench-{name}-{os.getpid()}")
            await db.connect()
            await db.create_resource(name=RESOURCE, attributes=ATTRIBUTES, timestamps=True)
            plugin = WebSocketPlugin(
                port=0,
                resources={RESOURCE: True},
                max_subscriptions_per_ip=None,  # every bench socket comes from 127.0.0.1
            )
            await db.use_plugin(plugin)
            port = plugin.port
            resource = db.resources[RESOURCE]

            async def publish(seq: int, sent: int, room: str) -> None:
                await resource.insert(
                    {"roomId": room, "content": CONTENT, "seq": seq, "sent": sent}
                )

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
                        await ws.send_str('{"type":"subscribed"}')
                finally:
                    sockets.discard(ws)
                return ws

            runner, port = await serve_websocket(handler)

            async def publish(seq: int, sent: int, room: str) -> None:
                frame = orjson.dumps(
                    {
                        "type": "event",
                        "resource": RESOURCE,
                        "event": "insert",
                        "data": _fake_record(seq, sent, room),
                        "timestamp": int(time.time() * 1000),
                    }
                ).decode()
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
                start_ns = time.monotonic_ns()
                fan0 = _fanout_totals(plugin) if plugin else (0.0, 0.0)
                conn.send({"cpu0": cpu0, "start_ns": start_ns, "fanout0": fan0})
                await _write(publish, progress, slots, burst)
                conn.send({"written_ns": time.monotonic_ns()})
            elif cmd == "stats":
                conn.send(
                    {
                        "cpu": time.process_time(),
                        "fanout": _fanout_totals(plugin) if plugin else (0.0, 0.0),
                        "connections": connections(),
                    }
                )

    asyncio.run(main())


# -- orchestration --------------------------------------------------------------------------------
class Rig:
    """Servers and client processes; each client process holds its share of every server's
    sockets. ``setups[g]`` is the list of setup frames per socket for server ``g``."""

    def __init__(
        self, stack: contextlib.ExitStack, kinds: list[str], name: str, server: Any = None
    ) -> None:
        self.kinds = kinds
        n = len(kinds)
        self.progress = _ctx.RawArray("q", CLIENT_PROCS * n)
        self.servers = []
        for g, kind in enumerate(kinds):
            slots = [p * n + g for p in range(CLIENT_PROCS)]
            self.servers.append(
                stack.enter_context(
                    spawn(server or server_main, kind, self.progress, slots, f"{name}{g}")
                )
            )
        self.clients = [
            stack.enter_context(spawn(clients_main, self.progress, p, n))
            for p in range(CLIENT_PROCS)
        ]
        self.ports = [s.recv()["port"] for s in self.servers]
        for c in self.clients:
            c.recv()
        self.shares: list[list[range]] = []  # shares[g][p]: socket indices held by process p

    def connect(self, g: int, setups: list[list[bytes]], sample_every: int) -> None:
        count = len(setups)
        bounds = [count * p // CLIENT_PROCS for p in range(CLIENT_PROCS + 1)]
        share = [range(bounds[p], bounds[p + 1]) for p in range(CLIENT_PROCS)]
        for p, c in enumerate(self.clients):
            c.send(
                (
                    "connect",
                    g,
                    "127.0.0.1",
                    self.ports[g],
                    setups[share[p].start : share[p].stop],
                    sample_every,
                )
            )
        for c in self.clients:
            c.recv(timeout=120)
        self.shares.append(share)
        self.servers[g].send(("stats",))
        connected = self.servers[g].recv()["connections"]
        if connected != count:
            raise RuntimeError(f"server {g}: {connected} connections, expected {count}")

    def burst(
        self, g: int, burst: dict[str, Any], expected: list[int], timeout: float
    ) -> dict[str, Any]:
        """Run one burst against server ``g``; ``expected[p]``: frames process ``p`` must count."""
        nap = 0.0 if burst.get("rate") else burst.get("nap", NAP_SECONDS)
        for p, c in enumerate(self.clients):
            c.send(("arm", g, expected[p], nap))
        client_cpu0 = [c.recv()["cpu"] for c in self.clients]  # each process's own CPU clock
        server = self.servers[g]
        machine0 = machine_busy_seconds()
        server.send(("burst", burst))
        started = server.recv()
        server.recv(timeout=timeout)  # the writer is done
        for c in self.clients:
            c.send(("collect", g, timeout))
        got = [c.recv(timeout=timeout + 10) for c in self.clients]
        server.send(("stats",))
        stats = server.recv()
        machine = machine_busy_seconds() - machine0
        wall = (max(r["last_ns"] for r in got) - started["start_ns"]) / 1e9
        frames = sum(r["frames"] for r in got)
        fan_sum = stats["fanout"][0] - started["fanout0"][0]
        fan_n = stats["fanout"][1] - started["fanout0"][1]
        return {
            "frames": frames,
            "expected": sum(expected),
            "wall": wall,
            "server_cpu": stats["cpu"] - started["cpu0"],
            "client_cpu": [r["cpu"] - t for r, t in zip(got, client_cpu0, strict=True)],
            "machine_busy": machine,
            "latencies": [x for r in got for x in r["latencies"]],
            "fanout_seconds": fan_sum,
            "fanout_changes": fan_n,
        }

    def stop(self) -> None:
        for child in [*self.clients, *self.servers]:
            with contextlib.suppress(Exception):
                child.send(("stop",))
        for child in [*self.clients, *self.servers]:
            child.process.join(10)


@contextlib.contextmanager
def rig(kinds: list[str], name: str, server: Any = None) -> Iterator[Rig]:
    """``server``: the server processes' main (default ``server_main``)."""
    with contextlib.ExitStack() as stack:
        r = Rig(stack, kinds, name, server)
        try:
            yield r
        finally:
            r.stop()


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy so far (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _CLK_TCK


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def client_bottleneck_note(runs: list[dict[str, Any]], label: str) -> str:
    """Which side limited the bursts: the load generator, the server, or a busy machine."""
    wall = sum(r["wall"] for r in runs)
    server = sum(r["server_cpu"] for r in runs) / wall
    clients = [sum(r["client_cpu"][p] for r in runs) / wall for p in range(CLIENT_PROCS)]
    machine = sum(r["machine_busy"] for r in runs) / wall
    others = max(0.0, machine - server - sum(clients))
    cores = os.cpu_count() or 1
    shares = ", ".join(f"{c:.0%}" for c in clients)
    said = f"server at {server:.0%} of a core, client processes at {shares}"
    if max(clients) >= 0.85 and server < 0.85:
        return f"{label}: load generator was the bottleneck ({said}); compare server CPU per frame"
    if server >= 0.85:
        return f"{label}: server-bound ({said})"
    if machine >= 0.85 * cores:
        return (
            f"{label}: machine CPU-bound, neither side alone ({said}, other processes"
            f" {others:.2f} of {cores} cores); frames/s understates both, compare server CPU/frame"
        )
    return (
        f"{label}: neither side CPU-bound ({said}): paced by the writer's window or by"
        " scheduling delays"
    )


def run(quick: bool) -> list[Result]:
    clients = 50 if quick else 1000
    events = 20 if quick else 60
    reps = 2 if quick else 11
    paced_events = 10 if quick else 40
    paced_rate = 50.0 if quick else 20.0
    sample_every = 1 if quick else 25
    subscribe = orjson.dumps({"type": "subscribe", "resource": RESOURCE})
    ours_setup = [[subscribe] for _ in range(clients)]
    kinds = ["ours", "bare"]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    paced: dict[str, dict[str, Any]] = {}
    with rig(kinds, "fanout") as r:
        for g in range(len(kinds)):
            r.connect(g, ours_setup, sample_every)
        expected_per_event = [len(s) for s in r.shares[0]]
        burst = {
            "events": events,
            "frames_per_event": clients,
            "window": WINDOW_EVENTS,
            "rooms": ["lobby"],
        }
        timeout = 60.0

        def one(g: int, b: dict[str, Any]) -> dict[str, Any]:
            return r.burst(g, b, [n * b["events"] for n in expected_per_event], timeout)

        for g in range(len(kinds)):  # warm-up
            one(g, {**burst, "events": max(5, events // 5)})
        for rep in range(reps):  # alternate which goes first, so neither always follows the other
            for kind in kinds if rep % 2 == 0 else kinds[::-1]:
                runs[kind].append(one(kinds.index(kind), burst))
        for g, kind in enumerate(kinds):
            # Paced well below capacity: the latency of one change, not of a queue.
            paced[kind] = one(g, {**burst, "events": paced_events, "rate": paced_rate})

    def rate(run: dict[str, Any]) -> float:
        return run["frames"] / run["wall"]

    def us_per_frame(run: dict[str, Any]) -> float:
        return run["server_cpu"] / run["frames"] * 1e6

    ours = Stat.of(rate(x) for x in runs["ours"])
    base = Stat.of(rate(x) for x in runs["bare"])
    extra: dict[str, Any] = {}
    for kind, label in (("ours", "ours"), ("bare", "baseline")):
        lat = [x / 1e6 for x in paced[kind]["latencies"]]
        loaded = [x / 1e6 for run in runs[kind] for x in run["latencies"]]
        cpu = Stat.of(us_per_frame(x) for x in runs[kind])
        extra[f"{label}_server_cpu_us_per_frame"] = round(cpu.median, 2)
        extra[f"{label}_server_cpu_us_per_frame_min_max"] = [round(cpu.min, 2), round(cpu.max, 2)]
        extra[f"{label}_latency_p50_ms"] = round(percentile(lat, 50), 3)
        extra[f"{label}_latency_p99_ms"] = round(percentile(lat, 99), 3)
        extra[f"{label}_loaded_latency_p50_ms"] = round(percentile(loaded, 50), 3)
        extra[f"{label}_loaded_latency_p99_ms"] = round(percentile(loaded, 99), 3)
        extra[f"{label}_frames"] = [x["frames"] for x in runs[kind]]
        extra[f"{label}_frames_expected"] = [x["expected"] for x in runs[kind]]
        extra[f"{label}_server_cpu_share"] = round(
            sum(x["server_cpu"] for x in runs[kind]) / sum(x["wall"] for x in runs[kind]), 3
        )
        extra[f"{label}_client_cpu_us_per_frame"] = round(
            Stat.of(sum(x["client_cpu"]) / x["frames"] * 1e6 for x in runs[kind]).median, 2
        )
        extra[f"{label}_machine_busy_cores"] = round(
            sum(x["machine_busy"] for x in runs[kind]) / sum(x["wall"] for x in runs[kind]), 2
        )
        extra[f"{label}_client_cpu_share"] = [
            round(
                sum(x["client_cpu"][p] for x in runs[kind]) / sum(x["wall"] for x in runs[kind]), 3
            )
            for p in range(CLIENT_PROCS)
        ]
    fan = runs["ours"]
    extra["ours_fanout_wall_us_per_change"] = round(
        sum(x["fanout_seconds"] for x in fan) / max(1, sum(x["fanout_changes"] for x in fan)) * 1e6,
        1,
    )
    # Each repetition ran ours and baseline back to back: per-pair ratios shrug off slow drift.
    extra["paired_ratio_median"] = round(
        Stat.of(rate(a) / rate(b) for a, b in zip(runs["ours"], runs["bare"], strict=True)).median,
        3,
    )
    cpu_ratio = extra["baseline_server_cpu_us_per_frame"] / extra["ours_server_cpu_us_per_frame"]
    extra["server_cpu_efficiency_ratio"] = round(cpu_ratio, 3)
    notes = [
        f"server CPU/frame: ours {extra['ours_server_cpu_us_per_frame']} us, baseline"
        f" {extra['baseline_server_cpu_us_per_frame']} us (baseline/ours = {cpu_ratio:.2f});"
        f" paired frames/s ratio {extra['paired_ratio_median']};"
        f" latency p50/p99 at {paced_rate:g} events/s: ours {extra['ours_latency_p50_ms']}/"
        f"{extra['ours_latency_p99_ms']} ms, baseline {extra['baseline_latency_p50_ms']}/"
        f"{extra['baseline_latency_p99_ms']} ms",
    ]
    for kind, label in (("ours", "ours"), ("bare", "baseline")):
        notes.append(client_bottleneck_note(runs[kind], label))
    for kind in kinds:
        bad = [x for x in runs[kind] if x["frames"] != x["expected"]]
        if bad:
            notes.append(f"{kind}: {len(bad)} burst(s) delivered fewer frames than expected")
    return [
        Result(
            name="fanout",
            params={
                "clients": clients,
                "events_per_burst": events,
                "client_processes": CLIENT_PROCS,
                "window_events": WINDOW_EVENTS,
                "frame_bytes": _frame_size(),
                "heartbeat": 30.0,
            },
            unit="frames/s",
            ours=ours,
            baseline=base,
            target=Target(">=", 0.7),
            extra=extra,
            notes=notes,
        )
    ]


def _frame_size() -> int:
    return len(
        orjson.dumps(
            {
                "type": "event",
                "resource": RESOURCE,
                "event": "insert",
                "data": _fake_record(0, time.monotonic_ns(), "lobby"),
                "timestamp": int(time.time() * 1000),
            }
        )
    )
