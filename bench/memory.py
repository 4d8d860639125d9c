"""Memory per idle, authenticated, subscribed connection (SPEC §9), against a bare aiohttp server.

Ours: a ``WebSocketPlugin`` with default settings (heartbeat 30 s, compression off) on
``memory://``, JWT authentication (driver ``jwt``, one token per connection with its own ``sub``
and an ``exp`` an hour away), one resource. Each connection authenticates with ``?token=``,
subscribes to the resource and receives one event (an insert made through the core in the
server process), then idles.

Baseline: a bare aiohttp server whose handler per socket reads frames and starts one sender
task that drains an ``asyncio.Queue``; it answers the subscribe frame through that queue and
gets the same event pushed into every queue. Compression off, no heartbeat, no auth.

Both servers run in their own process, and the sockets' other ends live in a separate, lean
client process (raw asyncio, not aiohttp), so the load generator neither starves nor inflates
the server. The number is the growth of the server process's RSS from before the first
connection (after a small warm-up round that is connected, fed an event and closed again) to
after every connection is subscribed and has received its event, divided by the number of
connections. Every client offers ``permessage-deflate`` the way browsers do, so the rows also
check that the default negotiates no compression and sends uncompressed frames.

The full run adds an informational pair with compression on (bare and ours, fewer sockets):
each socket that has sent a compressed frame holds its own zlib context.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import os
import time
from typing import Any

from .harness import Result, Stat, Target, raise_fd_limit, rss_bytes, serve_websocket, spawn

SECRET = "bench-memory-secret-0123456789abcdef"
RESOURCE = "items"
WARMUP = 20
KIB = 1024


# -- servers (child processes) ----------------------------------------------------------------
def _serve(conn: Any, setup: Any) -> None:
    """Run ``setup()`` (returns (port, emit)), then obey the parent's commands on ``conn``."""
    raise_fd_limit(20000)
    logging.disable(logging.WARNING)

    async def main() -> None:
        port, emit, stop = await setup()
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        commands: asyncio.Queue = asyncio.Queue()
        loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
        conn.send({"port": port, "pid": os.getpid()})
        while not done.done():
            command = await commands.get()
            if command == "settle":
                await asyncio.sleep(0.2)
                gc.collect()
                await asyncio.sleep(0.05)
                conn.send("settled")
            elif command == "event":
                conn.send({"receivers": await emit()})
            elif command == "stop":
                await stop()
                conn.send("stopped")
                return

    asyncio.run(main())


def ours_server(conn: Any, compression: bool = False) -> None:
    import structlog

    from s3db_core import Database
    from s3db_ws_plugin import WebSocketPlugin

    # The plugin logs every login at info level; a benchmark does not want 5,000 log lines.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def setup():
        db = Database("memory://")
        options = {"compression": True} if compression else {}  # else: the default
        plugin = WebSocketPlugin(
            port=0,
            auth={"drivers": [{"driver": "jwt", "config": {"secret": SECRET}}]},
            resources={RESOURCE: True},
            max_connections_per_ip=None,  # every bench socket comes from 127.0.0.1
            max_subscriptions_per_ip=None,  # (and holds a subscription)
            **options,
        )
        await db.use_plugin(plugin)
        await db.connect()
        res = await db.create_resource(RESOURCE, {"name": "string", "n": "number"})
        counter = iter(range(1 << 30))

        async def emit() -> int:
            await res.insert({"name": "tick", "n": next(counter)})
            return len(plugin.connections)

        return plugin.port, emit, db.disconnect

    _serve(conn, setup)


def bare_server(conn: Any, compression: bool = False) -> None:
    import orjson
    from aiohttp import WSMsgType, web

    queues: set[asyncio.Queue] = set()
    subscribed = '{"type":"subscribed","resource":"items"}'

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=compression)
        await ws.prepare(request)
        queue: asyncio.Queue = asyncio.Queue()

        async def sender() -> None:
            while True:
                await ws.send_str(await queue.get())
                while not queue.empty():  # drain everything pending per wakeup
                    await ws.send_str(queue.get_nowait())

        task = asyncio.create_task(sender())
        queues.add(queue)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    queue.put_nowait(subscribed)
        finally:
            queues.discard(queue)
            task.cancel()
        return ws

    async def setup():
        runner, port = await serve_websocket(handler)
        counter = iter(range(1 << 30))

        async def emit() -> int:
            n = next(counter)
            event = {"type": "event", "resource": RESOURCE, "event": "insert", "data": {"n": n}}
            frame = orjson.dumps(event).decode()
            for queue in queues:
                queue.put_nowait(frame)
            return len(queues)

        return port, emit, runner.cleanup

    _serve(conn, setup)


# -- the lean client (child process) ----------------------------------------------------------
_MASK = b"\x1f\x2e\x3d\x4c"


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame (payloads here are short)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    else:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    masked = bytes(b ^ _MASK[i % 4] for i, b in enumerate(payload))
    return header + _MASK + masked


class _Socket(asyncio.Protocol):
    """One raw WebSocket: handshake, one subscribe frame, then counts data frames."""

    __slots__ = ("pool", "request", "transport", "buf", "upgraded", "frames", "ready", "evented")

    def __init__(self, pool: _Pool, request: bytes) -> None:
        self.pool = pool
        self.request = request
        self.transport: Any = None
        self.buf = bytearray()
        self.upgraded = False
        self.frames = 0
        self.ready = pool.loop.create_future()
        self.evented = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            if not head.startswith(b"http/1.1 101"):
                self.ready.set_exception(ConnectionError(head[:200].decode(errors="replace")))
                self.transport.close()
                return
            self.upgraded = True
            if b"permessage-deflate" in head:
                self.pool.negotiated += 1
            self.transport.write(self.pool.subscribe)
        while len(buf) >= 2:
            first, size = buf[0], buf[1] & 0x7F
            offset = 2
            if size == 126:
                if len(buf) < 4:
                    return
                size, offset = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                if len(buf) < 10:
                    return
                size, offset = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < offset + size:
                return
            payload = bytes(buf[offset : offset + size])
            del buf[: offset + size]
            opcode = first & 0x0F
            if opcode == 0x9:
                self.transport.write(_client_frame(0xA, payload))
            elif opcode == 0x8:
                self.transport.close()
            elif opcode < 0x8:
                self._on_data(payload, bool(first & 0x40))

    def _on_data(self, payload: bytes, compressed: bool) -> None:
        pool = self.pool
        self.frames += 1
        if compressed:
            pool.compressed += 1
        elif b'"error"' in payload and pool.error is None:
            pool.error = payload[:300].decode(errors="replace")
        if self.frames == pool.ready_frames and not self.ready.done():
            self.ready.set_result(None)
        elif self.frames > pool.ready_frames and not self.evented:
            self.evented = True
            pool.events += 1
            if pool.events >= pool.expected_events:
                pool.all_evented.set()


class _Pool:
    def __init__(self, port: int, ready_frames: int, with_tokens: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self.port = port
        self.ready_frames = ready_frames
        self.with_tokens = with_tokens
        self.subscribe = _client_frame(
            0x1, b'{"type":"subscribe","resource":"%s"}' % RESOURCE.encode()
        )
        self.sockets: list[_Socket] = []
        self.negotiated = self.compressed = self.events = 0
        self.expected_events = 0
        self.all_evented = asyncio.Event()
        self.error: str | None = None
        self.serial = 0

    def _request(self) -> bytes:
        import jwt

        self.serial += 1
        target = "/"
        if self.with_tokens:
            claims = {"sub": f"user-{self.serial}", "exp": int(time.time()) + 3600}
            target = f"/?token={jwt.encode(claims, SECRET, algorithm='HS256')}"
        key = base64.b64encode(os.urandom(16)).decode()
        return (
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ).encode()

    async def open(self, count: int, in_flight: int = 64) -> None:
        sem = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with sem:
                request = self._request()
                _, sock = await self.loop.create_connection(
                    lambda: _Socket(self, request), "127.0.0.1", self.port
                )
                self.sockets.append(sock)
                await sock.ready

        await asyncio.gather(*(one() for _ in range(count)))
        if self.error:
            raise RuntimeError(f"server answered an error: {self.error}")

    async def await_events(self, timeout: float) -> None:
        self.expected_events = len(self.sockets)
        if self.events < self.expected_events:
            await asyncio.wait_for(self.all_evented.wait(), timeout)

    async def close_all(self) -> None:
        for sock in self.sockets:
            if sock.transport is not None:
                sock.transport.close()
        self.sockets.clear()
        self.events = self.negotiated = self.compressed = 0
        self.all_evented.clear()
        await asyncio.sleep(0.05)


def client_process(conn: Any) -> None:
    """Commands: ("pool", port, ready_frames, with_tokens), ("open", n), "events", "close"."""
    raise_fd_limit(20000)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue = asyncio.Queue()
        loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
        pool: _Pool | None = None
        conn.send("up")
        while True:
            command = await commands.get()
            if command[0] == "pool":
                pool = _Pool(*command[1:])
                conn.send("ok")
            elif command[0] == "open":
                assert pool is not None
                started = time.monotonic()
                await pool.open(command[1])
                conn.send({"open": len(pool.sockets), "seconds": time.monotonic() - started})
            elif command[0] == "events":
                assert pool is not None
                await pool.await_events(120.0)
                conn.send(
                    {
                        "events": pool.events,
                        "negotiated": pool.negotiated,
                        "compressed": pool.compressed,
                    }
                )
            elif command[0] == "close":
                if pool is not None:
                    await pool.close_all()
                conn.send("closed")
            elif command[0] == "exit":
                return

    asyncio.run(main())


# -- measuring --------------------------------------------------------------------------------
def _one_round(
    client: Any, server_main: Any, n: int, ours: bool, compression: bool
) -> dict[str, Any]:
    """Start a server, connect ``n`` sockets from ``client``; RSS growth per socket."""
    with spawn(server_main, compression) as server:
        info = server.recv(60)
        client.send(("pool", info["port"], 2 if ours else 1, ours))
        client.recv()

        def fed_round(count: int) -> dict[str, Any]:
            client.send(("open", count))
            opened = client.recv(300)
            server.send("event")
            server.recv(60)
            client.send(("events",))
            return {**opened, **client.recv(180)}

        fed_round(WARMUP)  # first-use costs (imports, caches) are not per-connection costs
        client.send(("close",))
        client.recv()
        server.send("settle")
        server.recv()
        before = rss_bytes(info["pid"])
        stats = fed_round(n)
        server.send("settle")
        server.recv()
        after = rss_bytes(info["pid"])
        client.send(("close",))
        client.recv()
        return {
            "per_conn": (after - before) / n,
            "before": before,
            "after": after,
            "negotiated": stats["negotiated"],
            "compressed": stats["compressed"],
            "open_seconds": stats["seconds"],
        }


def _row(name: str, n: int, ours: list[dict], bare: list[dict], target: Target | None) -> Result:
    notes = []
    negotiated = sum(r["negotiated"] for r in ours)
    compressed = sum(r["compressed"] for r in ours)
    extra = {
        "ours_kib_per_conn": [round(r["per_conn"] / KIB, 2) for r in ours],
        "baseline_kib_per_conn": [round(r["per_conn"] / KIB, 2) for r in bare],
        "ours_rss_mib_before_after": [(r["before"] >> 20, r["after"] >> 20) for r in ours],
        "baseline_rss_mib_before_after": [(r["before"] >> 20, r["after"] >> 20) for r in bare],
        "ours_open_seconds": [round(r["open_seconds"], 2) for r in ours],
        "baseline_open_seconds": [round(r["open_seconds"], 2) for r in bare],
        "ours_deflate_negotiated": negotiated,
        "ours_compressed_frames": compressed,
    }
    if target is not None and (negotiated or compressed):
        notes.append(f"default settings negotiated deflate on {negotiated} sockets")
    return Result(
        name=name,
        params={"connections": n, "reps": len(ours)},
        unit="KiB/conn",
        ours=Stat.of(r["per_conn"] / KIB for r in ours),
        baseline=Stat.of(r["per_conn"] / KIB for r in bare),
        target=target,
        extra=extra,
        notes=notes,
    )


def run(quick: bool) -> list[Result]:
    n = 200 if quick else 5000
    reps = 1 if quick else 3
    raise_fd_limit(20000)
    ours: list[dict] = []
    bare: list[dict] = []
    with spawn(client_process) as client:
        client.recv(60)
        for _ in range(reps):  # interleaved, so both see the same machine
            ours.append(_one_round(client, ours_server, n, True, False))
            bare.append(_one_round(client, bare_server, n, False, False))
        results = [
            _row("memory per subscribed connection", n, ours, bare, Target("<=", 1.25)),
        ]
        if not quick:
            m = 1000
            ours_z = [_one_round(client, ours_server, m, True, True)]
            bare_z = [_one_round(client, bare_server, m, False, True)]
            row = _row("memory per connection, compression on (info)", m, ours_z, bare_z, None)
            row.notes.append(
                f"deflate negotiated on {ours_z[0]['negotiated']}/{m} of ours; "
                "each socket that sent a compressed frame keeps a zlib context"
            )
            results.append(row)
        client.send(("exit",))
    # The default must not compress: every event went out uncompressed, nothing negotiated.
    first = results[0]
    if first.extra["ours_deflate_negotiated"] or first.extra["ours_compressed_frames"]:
        first.met = False
    return results
