"""The dependency internals ``s3db_ws_plugin.internals`` relies on are still there.

Each test fails loudly, naming what changed, when an upgrade of asyncio, aiohttp or structlog
removes or moves one: the code would keep working (each use falls back to the documented
behaviour) but would lose the measured gain in docs/performance.md without anyone noticing.
"""

from __future__ import annotations

import asyncio

import aiohttp
import structlog
from aiohttp import web
from structlog.testing import capture_logs

from s3db_ws_plugin.internals import (
    READ_SIZE,
    client_transport,
    limit_read_size,
    structlog_var,
)


async def test_asyncio_socket_transports_still_read_max_size_bytes_per_recv():
    accepted: asyncio.Future[asyncio.Transport] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(writer.transport)  # type: ignore[arg-type]

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        transport = await asyncio.wait_for(accepted, 5)
        size = getattr(transport, "max_size", None)
        assert type(size) is int and size > READ_SIZE, (
            f"asyncio's socket transport no longer reads max_size bytes per recv() (got "
            f"{size!r}): internals.limit_read_size does nothing now; re-measure get over the socket"
        )
        limit_read_size(transport)
        assert transport.max_size == READ_SIZE  # type: ignore[attr-defined]
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def test_aiohttp_client_websockets_still_keep_their_transport_on_the_writer():
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://127.0.0.1:{port}/") as ws,
        ):
            transport = client_transport(ws)
            assert transport is not None, (
                "aiohttp's ClientWebSocketResponse no longer has _writer.transport: the client "
                "reads 256 KiB per recv() again; find the transport another way"
            )
            # The same socket as the one aiohttp's public API reports.
            assert transport.get_extra_info("socket") is ws.get_extra_info("socket")
    finally:
        await runner.cleanup()


def test_structlog_still_binds_each_key_in_its_own_context_variable():
    var = structlog_var("request_id")
    token = var.set("req-7")
    try:
        assert structlog.contextvars.get_contextvars().get("request_id") == "req-7", (
            "structlog no longer reads context-local values from the ContextVar its "
            "bind_contextvars token names: internals.structlog_var binds nothing now"
        )
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            structlog.get_logger("test").info("hello")
        assert logs[0]["request_id"] == "req-7"
    finally:
        var.reset(token)
    assert "request_id" not in structlog.contextvars.get_contextvars()
