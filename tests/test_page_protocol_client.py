"""docs/protocol.md's "complete client in 40 lines", exactly as printed, in real Chromium against
a server that requires a JWT: it signs in with an ``auth`` frame (the token never in a URL),
reads, writes and gets live events, and a bad token fails its ``ready``."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from browser_helpers import chromium, pages_for, served
from test_docs import ROOT, blocks_of

from examples.common import Options
from s3db_core import Database
from s3db_ws_plugin import WebSocketPlugin

PAGE = """<!doctype html>
<meta charset="utf-8"><title>protocol client</title><link rel="icon" href="data:,">
<script type="module">
  import { connect } from "/protocol-client.js";
  window.connect = connect;
</script>
"""


def client_module() -> str:
    [block] = [
        b for b in blocks_of(ROOT / "docs" / "protocol.md") if b.info == "js" and "export function connect" in b.code
    ]
    return block.code


async def create_app(options: Options) -> tuple[Database, WebSocketPlugin, list[Any]]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def module(request: web.Request) -> web.Response:
        return web.Response(text=client_module(), content_type="text/javascript")

    db = Database(options.db)
    await db.connect()
    await db.create_resource("notes", {"title": "string|required"})
    plugin = WebSocketPlugin(
        port=options.port,
        host=options.host,
        auth={"required": True, "drivers": [{"driver": "jwt", "config": {"secret": options.jwt_secret}}]},
        resources={"notes": True},
        routes=[web.get("/page", page), web.get("/protocol-client.js", module)],
    )
    await db.use_plugin(plugin)
    return db, plugin, []


@pytest.fixture(scope="module")
def chromium_browser():
    with chromium() as browser:
        yield browser


def test_the_protocol_pages_client_signs_in_with_an_auth_frame(request, chromium_browser):
    with served(create_app) as server, pages_for(request, chromium_browser) as pages:
        page = pages.new()
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.goto(f"{server.http_url}/page")
        page.wait_for_function("typeof window.connect === 'function'")

        token = server.token("alice")
        user = page.evaluate(
            """async (token) => {
              window.events = [];
              window.db = connect(`ws://${location.host}/`, token, (e) => window.events.push(e));
              return await window.db.ready;
            }""",
            token,
        )
        assert user["id"] == "alice"
        page.evaluate("() => db.request({ type: 'subscribe', resource: 'notes' })")
        page.evaluate("() => db.request({ type: 'insert', resource: 'notes', data: { title: 'hi' } })")
        page.wait_for_function("window.events.length === 1")
        assert page.evaluate("() => [events[0].event, events[0].data.title]") == ["insert", "hi"]
        listed = page.evaluate("async () => (await db.request({ type: 'list', resource: 'notes', limit: 10 })).data")
        assert [n["title"] for n in listed] == ["hi"]

        refused = page.evaluate(
            """async () => {
              try { await connect(`ws://${location.host}/`, "not-a-token", () => {}).ready; return "connected"; }
              catch (error) { return error.code || error.message; }
            }"""
        )
        assert refused == "UNAUTHORIZED"
        assert len(sockets) == 2
        assert not any(token in url or "token=" in url for url in sockets), sockets  # never in the URL
        assert pages.errors() == []
