"""Serving a page beside the socket: a GET route at the socket's path answers plain GETs there,
WebSocket upgrades still reach the socket, and ``examples.pages`` serves every example's page."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import web
from ws_helpers import JWT_AUTH, make_token, serve

from examples.common import Options, dev_login_route
from examples.pages import SHARED, example_page, render_page, serve_page

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = ("chat", "dashboard", "collab", "notifications", "iot", "multitenant", "leaderboard")


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="<h1>the app</h1>", content_type="text/html")


async def test_a_get_route_at_the_socket_path_serves_the_page_and_the_socket_still_works():
    async with serve(routes=[web.get("/", hello)], auth=JWT_AUTH) as (_db, plugin):
        async with aiohttp.ClientSession() as http:
            async with http.get(plugin.http_url + "/") as resp:
                assert (resp.status, await resp.text()) == (200, "<h1>the app</h1>")
            async with http.head(plugin.http_url + "/") as resp:
                assert resp.status == 200
            async with http.ws_connect(plugin.url) as ws:
                assert (await ws.receive_json(timeout=5))["type"] == "auth_required"
                await ws.send_json({"type": "auth", "token": make_token("ann")})
                assert (await ws.receive_json(timeout=5))["type"] == "authenticated"


async def test_without_a_page_a_plain_get_of_the_socket_path_says_it_speaks_websocket_only():
    async with serve() as (_db, plugin), aiohttp.ClientSession() as http:
        async with http.get(plugin.http_url + "/") as resp:
            assert resp.status == 426


async def test_a_page_beside_a_socket_on_another_path():
    async with serve(path="/ws", routes=[web.get("/", hello)]) as (_db, plugin):
        async with aiohttp.ClientSession() as http, http.get(plugin.http_url + "/") as resp:
            assert await resp.text() == "<h1>the app</h1>"


@pytest.mark.parametrize("name", NAMES)
async def test_every_example_has_a_page_and_the_shared_assets(name):
    static = EXAMPLES / name / "static"
    own = (static / "index.html").read_text()
    # The head and the top bar are shared (layout.html): the page keeps only its own parts.
    assert "<head>" not in own and '<header class="topbar">' not in own
    html = render_page(static / "index.html")
    for asset in ("/shared/base.css", "/favicon.ico", "/static/", '<header class="topbar">'):
        assert asset in html
    async with serve(routes=serve_page(static, old_path=f"/{name}-old")) as (_db, plugin):
        async with aiohttp.ClientSession() as http:
            async with http.get(plugin.http_url + "/") as resp:
                assert await resp.text() == html
            for path, kind in (("/", "text/html"), ("/shared/base.css", "text/css"),
                               ("/shared/app.js", "javascript"), ("/favicon.ico", "image/x-icon")):
                async with http.get(plugin.http_url + path) as resp:
                    assert resp.status == 200, path
                    assert kind in resp.headers["Content-Type"], path
            async with http.get(plugin.http_url + f"/{name}-old", allow_redirects=False) as resp:
                assert (resp.status, resp.headers["Location"]) == (302, "/")
            scripts = [line.split('src="')[1].split('"')[0] for line in html.splitlines() if "<script" in line]
            for script in scripts:  # the page's own module, and what it imports
                async with http.get(plugin.http_url + script) as resp:
                    assert resp.status == 200, script
    assert (SHARED / "favicon.ico").read_bytes()[:4] == b"\0\0\1\0"


def test_the_dev_login_is_served_only_with_dev():
    def paths(routes) -> list[str]:
        return [getattr(r, "path", None) or getattr(r, "prefix", "") for r in routes]

    app = str(EXAMPLES / "chat" / "app.py")
    for dev in (True, False):
        options = Options(port=0, host="127.0.0.1", db="memory://", jwt_secret="s" * 32, dev=dev)
        assert ("/dev/login" in paths(example_page(app, options))) is dev


async def test_the_dev_login_offers_only_its_fixed_claim_choices():
    secret = "s" * 32
    login = dev_login_route(secret, allowed_roles=("member", "admin"), claims={"tenantId": ("acme", "globex")})
    async with serve(routes=[login]) as (_db, plugin), aiohttp.ClientSession() as http:
        url = plugin.http_url + "/dev/login"
        async with http.post(url, json={"name": "cleo", "role": "admin", "tenantId": "globex"}) as resp:
            body = await resp.json()
        claims = jwt.decode(body["token"], secret, algorithms=["HS256"])
        assert (claims["sub"], claims["role"], claims["tenantId"]) == ("cleo", "admin", "globex")
        assert body["user"] == {"id": "cleo", "name": "cleo", "role": "admin", "tenantId": "globex"}
        async with http.post(url, json={"name": "ada"}) as resp:  # the first choice by default
            assert jwt.decode((await resp.json())["token"], secret, algorithms=["HS256"])["tenantId"] == "acme"
        for bad in ({"name": "eve", "tenantId": "initech"}, {"name": "eve", "role": "game-server"}, ["eve"]):
            async with http.post(url, json=bad) as resp:
                assert resp.status == 400, bad
                assert "token" not in await resp.json()
