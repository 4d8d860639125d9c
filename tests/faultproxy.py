"""A fault-injecting HTTP/1.1 proxy for tests: put it between a client and a real server.

``FaultProxy(target_host, target_port)`` listens on a free loopback port (``await start()``;
``port``/``endpoint``) and relays requests one at a time per connection, knowing where each
request and response ends (Content-Length framing, ``Expect: 100-continue`` interim replies). A
test sets what goes wrong, at any time:

- ``drop_response = predicate(request)``: the request reaches the server and is committed there,
  then the reply is dropped and the client's connection closed, as a network failure right after
  the commit would. ``request`` is a ``Request`` (method, target, headers lower-cased).
  ``dropped`` counts the replies dropped.
- ``frozen = True``: new connections are accepted and never answered (and requests on existing
  connections are read and never answered): a store that hangs.
- ``hold_request = predicate(request)``: the request is read whole (the proxy says ``100
  Continue`` itself when asked) and kept from the server until ``release`` is set, then sent on and committed
  there while the client, long gone, never hears of it: a store that applies a write after
  the writer gave up on it. ``held`` counts them; ``landed`` is set once one was committed.

Everything is asyncio in the test's loop: no threads, no sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]


def create_only_put(request: Request) -> bool:
    """A PUT with ``If-None-Match: *`` (an insert's create-only write)."""
    return request.method == "PUT" and request.headers.get("if-none-match") == "*"


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            out += size_line + chunk
            if size == 0:
                return out
    return await reader.readexactly(int(headers.get("content-length", "0") or 0))


class FaultProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.drop_response: Callable[[Request], bool] | None = None
        self.frozen = False
        self.hold_request: Callable[[Request], bool] | None = None
        self.release = asyncio.Event()
        self.landed = asyncio.Event()
        self.held = 0
        self.dropped = 0
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()  # every relay task sees its sockets close and ends by itself
        if self._tasks:
            _, stuck = await asyncio.wait(list(self._tasks), timeout=2)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client_w)
        server_w: asyncio.StreamWriter | None = None
        try:
            if self.frozen:
                await client_r.read()  # accept, read, never answer
                return
            server_r, server_w = await asyncio.open_connection(*self.target)
            self._writers.add(server_w)
            while True:
                head = await _read_head(client_r)
                if head is None:
                    return
                if self.frozen:
                    await client_r.read()
                    return
                self.requests += 1
                line, headers = _headers(head)
                method, target = (line.split(" ") + ["", ""])[:2]
                request = Request(method, target, headers)
                expect = headers.get("expect", "").lower() == "100-continue"
                if self.hold_request is not None and self.hold_request(request):
                    if expect:
                        client_w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    body = await _read_body(client_r, headers)
                    self.held += 1
                    await self.release.wait()  # the client times out and gives up meanwhile
                    server_w.write(head)
                    if expect and await _read_head(server_r) is None:  # its own 100 Continue
                        return
                    server_w.write(body)
                    await server_w.drain()
                    reply = await _read_head(server_r)
                    if reply is not None:
                        await _read_body(server_r, _headers(reply)[1])
                        self.landed.set()
                    return
                server_w.write(head)
                if expect:
                    interim = await _read_head(server_r)
                    if interim is None:
                        return
                    client_w.write(interim)
                    if b" 100 " not in interim.split(b"\r\n", 1)[0] + b" ":
                        # The server answered without asking for the body: that is the reply.
                        _, rh = _headers(interim)
                        client_w.write(await _read_body(server_r, rh))
                        continue
                server_w.write(await _read_body(client_r, headers))
                await server_w.drain()
                reply = await _read_head(server_r)
                if reply is None:
                    return
                _, reply_headers = _headers(reply)
                body = b"" if method == "HEAD" else await _read_body(server_r, reply_headers)
                if self.drop_response is not None and self.drop_response(request):
                    self.dropped += 1
                    return  # committed on the server; the client never hears of it
                client_w.write(reply + body)
                await client_w.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            for writer in (client_w, server_w):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
            self._tasks.discard(task)
