"""The browser module ``/client.js`` in real headless Chromium (Debian's, driven by Playwright).

The server (a database, a WebSocketPlugin, and a page server on another origin that also mints
tokens like an app's token endpoint would) runs on its own asyncio loop in a background thread,
because Playwright's sync API refuses to run inside a running loop. A failing test leaves a
screenshot in ``test-results/``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator

import jwt
import pytest
from aiohttp import web
from browser_helpers import CHROMIUM, CHROMIUM_ARGS, RESULTS

from s3db_core import Database
from s3db_ws_plugin import WebSocketPlugin

SECRET = "browser-test-secret-long-enough-for-hs256"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>s3db client.js</title></head>
<body><pre id="log"></pre>
<script type="module">
  const server = new URL(location.href).searchParams.get("server");
  window.s3db = await import(`${server}/client.js`);
  window.events = [];
  window.log = (line) => { document.getElementById("log").textContent += line + "\\n"; };
</script></body></html>
"""

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and shutil.which("chromium") is None,
    reason="Debian chromium is not installed (make test installs it)",
)


def only_admins_delete(user, ctx):
    return user is not None and user.role == "admin"


BANNED: set[str] = set()


def not_banned(user, filter):
    return user.id not in BANNED


def make_token(sub: str = "alice", ttl: float = 3600, **claims) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + ttl, **claims}, SECRET, "HS256")


class Server:
    """The app under test on a private event loop in a daemon thread."""

    def __init__(self) -> None:
        self.name = f"browser-{uuid.uuid4().hex}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.db: Database | None = None
        self.plugin: WebSocketPlugin | None = None
        self.tokens_issued = 0
        self.page_runner = self.run(self._start_pages())

    def run(self, coro, timeout: float = 15):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def ws_url(self) -> str:
        return self.plugin.url

    @property
    def http_url(self) -> str:
        return self.plugin.http_url

    def page_url(self) -> str:
        return f"{self.pages}/?server={self.http_url}"

    async def _start_pages(self) -> web.AppRunner:
        async def index(request: web.Request) -> web.Response:
            return web.Response(text=PAGE, content_type="text/html")

        async def token(request: web.Request) -> web.Response:
            self.tokens_issued += 1
            ttl = float(request.query.get("ttl", 3600))
            return web.json_response(
                {"token": make_token(request.query.get("sub", "alice"), ttl)},
                headers={"Access-Control-Allow-Origin": "*"},
            )

        app = web.Application()
        app.router.add_get("/", index)
        app.router.add_get("/token", token)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.pages = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return runner

    async def start_app(self, port: int = 0) -> None:
        db = Database(f"memory://{self.name}")  # same name after a restart: same data
        await db.connect()
        await db.create_resource(
            "notes", {"title": "string|required", "roomId": "string|optional"}, timestamps=True
        )
        plugin = WebSocketPlugin(
            port=port,
            auth={"required": True, "drivers": [{"driver": "jwt", "config": {"secret": SECRET}}]},
            resources={
                "notes": {
                    "guard": {"delete": only_admins_delete, "subscribe": not_banned},
                    "read": {"roomId": {"$ne": "hidden"}},  # see the leave test
                }
            },
            channels={"room:*": {"presence": True, "events": ["message", "typing"]}},
        )
        await db.use_plugin(plugin)
        self.db, self.plugin = db, plugin

    async def stop_app(self) -> None:
        if self.db is not None:
            await self.db.disconnect()

    def insert(self, data: dict) -> dict:
        return self.run(self.db.resources.notes.insert(data))

    def restart(self) -> None:
        port = self.plugin.port
        self.run(self.stop_app())
        self.run(self.start_app(port))

    def close(self) -> None:
        self.run(self.stop_app())
        self.run(self.page_runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    srv.run(srv.start_app())
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
            args=CHROMIUM_ARGS,
            headless=True,
        )
        yield browser
        browser.close()


@pytest.fixture
def tab(chromium, server, request):
    context = chromium.new_context()
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
    failed_before = request.session.testsfailed
    page.goto(server.page_url())
    page.wait_for_function("window.s3db !== undefined", timeout=10_000)
    yield page
    if request.session.testsfailed > failed_before:
        RESULTS.mkdir(exist_ok=True)
        page.screenshot(path=str(RESULTS / f"{request.node.name}.png"), full_page=True)
        (RESULTS / f"{request.node.name}.console.txt").write_text("\n".join(console))
    context.close()


def test_client_js_is_served_as_a_module_any_origin_may_import(server, tab):
    response = tab.request.get(f"{server.http_url}/client.js")
    assert response.ok
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["access-control-allow-origin"] == "*"
    exported = tab.evaluate("Object.keys(window.s3db).sort()")
    assert {"Client", "S3dbError", "Subscription", "connect"} <= set(exported)


def test_connect_subscribe_receive_and_insert(server, tab):
    tab.evaluate(
        """async ({url, token}) => {
            window.db = await s3db.connect(url, { token });
            window.sub = await db.subscribe("notes", { filter: { roomId: "r1" } });
            window.all = await db.subscribe("notes", { events: ["insert"] }, (e) => events.push(e));
            log(`connected as ${db.user.id}`);
        }""",
        {"url": server.ws_url, "token": make_token("alice")},
    )
    assert tab.evaluate("db.user.id") == "alice" and tab.evaluate("db.clientId")
    server.insert({"title": "elsewhere", "roomId": "r2"})
    written = server.insert({"title": "from python", "roomId": "r1"})

    first = tab.evaluate("async () => (await sub.next()).value")
    assert first["event"] == "insert" and first["data"]["id"] == written["id"]
    assert first["resource"] == "notes" and first["timestamp"] > 0

    inserted = tab.evaluate(
        """async () => {
            const note = await db.insert("notes", { title: "from the browser", roomId: "r1" });
            const fetched = await db.get("notes", note.id);
            const page1 = await db.list("notes", { filter: { roomId: "r1" }, limit: 10 });
            const updated = await db.update("notes", note.id, { title: "edited" });
            const pong = await db.ping();
            return { note, fetched, titles: page1.items.map((n) => n.title), cursor: page1.cursor,
                     updated, pong };
        }"""
    )
    assert inserted["fetched"] == inserted["note"]
    assert inserted["titles"] == ["from python", "from the browser"] and inserted["cursor"] is None
    assert inserted["updated"]["title"] == "edited" and inserted["pong"] > 0
    stored = server.run(server.db.resources.notes.get(inserted["note"]["id"]))
    assert stored["title"] == "edited"

    nxt = tab.evaluate("async () => [(await sub.next()).value, (await sub.next()).value]")
    assert [(e["event"], e["data"]["title"]) for e in nxt] == [
        ("insert", "from the browser"),
        ("update", "edited"),
    ]
    tab.wait_for_function("events.length >= 3")  # callback: inserts only, every room
    titles = tab.evaluate("events.map((e) => e.data.title)")
    assert titles == ["elsewhere", "from python", "from the browser"]

    done = tab.evaluate("""async () => { await sub.unsubscribe(); return await sub.next(); }""")
    assert done["done"] is True


def test_errors_reject_with_code_details_and_request_id(server, tab):
    errors = tab.evaluate(
        """async ({url, token}) => {
            const db = await s3db.connect(url, { token });
            const note = await db.insert("notes", { title: "keep" });
            const attempt = async (fn) => {
              try { await fn(); return null; }
              catch (err) { return { name: err.name, code: err.code, details: err.details ?? null,
                                     requestId: err.requestId ?? null, isError: err instanceof s3db.S3dbError }; }
            };
            return {
              notFound: await attempt(() => db.get("notes", "missing")),
              forbidden: await attempt(() => db.delete("notes", note.id)),
              invalid: await attempt(() => db.insert("notes", { title: 7, extra: true })),
              noResource: await attempt(() => db.subscribe("users")),
              badLimit: await attempt(() => db.list("notes", { limit: 0 })),
              badToken: await attempt(() => s3db.connect(url, { token: "not.a.jwt", reconnect: false })),
              stillWorks: await db.ping() > 0,
            };
        }""",
        {"url": server.ws_url, "token": make_token("bob")},
    )
    assert errors["notFound"]["code"] == "NOT_FOUND" and errors["notFound"]["requestId"] is not None
    assert errors["notFound"]["isError"] and errors["notFound"]["name"] == "S3dbError"
    assert errors["forbidden"]["code"] == "FORBIDDEN"
    assert errors["invalid"]["code"] == "VALIDATION_ERROR"
    assert {d["field"] for d in errors["invalid"]["details"]} == {"title", "extra"}
    assert errors["noResource"]["code"] == "RESOURCE_NOT_FOUND"
    assert errors["badLimit"]["code"] == "INVALID_MESSAGE"
    assert errors["badLimit"]["details"]["field"] == "limit"
    assert errors["badToken"]["code"] == "UNAUTHORIZED"
    assert errors["stillWorks"] is True


def test_reconnects_and_resubscribes_after_a_server_restart(server, tab):
    tab.evaluate(
        """async ({url, pages}) => {
            const token = async () => (await (await fetch(`${pages}/token?sub=carol`)).json()).token;
            window.db = await s3db.connect(url, { token, backoff: { initial: 50, maximum: 300 } });
            window.reconnected = 0;
            db.on("reconnect", () => { reconnected += 1; });
            window.sub = await db.subscribe("notes", {}, (e) => events.push(e.data.title));
        }""",
        {"url": server.ws_url, "pages": server.pages},
    )
    server.insert({"title": "before"})
    tab.wait_for_function("events.length === 1")
    issued = server.tokens_issued

    server.restart()  # 1001 to every socket, then a new server on the same port and store
    tab.wait_for_function("reconnected === 1", timeout=10_000)
    assert server.tokens_issued > issued  # authenticated again with a fresh token
    server.insert({"title": "after"})
    tab.wait_for_function("events.length === 2")
    assert tab.evaluate("events") == ["before", "after"]
    assert tab.evaluate("async () => (await db.list('notes')).items.length") == 2
    assert tab.evaluate("db.state") == "open"


def test_token_function_refreshes_before_expiry(server, tab):
    tab.evaluate(
        """async ({url, pages}) => {
            const token = async () => (await (await fetch(`${pages}/token?sub=dave&ttl=2`)).json()).token;
            window.db = await s3db.connect(url, { token, reconnect: false });
            window.closedWith = null;
            db.on("close", (_, err) => { closedWith = err?.code ?? "closed"; });
            await db.subscribe("notes", {}, (e) => events.push(e.data.title));
        }""",
        {"url": server.ws_url, "pages": server.pages},
    )
    time.sleep(3.2)  # past the first token's exp: without a refresh the server closes with 4401
    server.insert({"title": "still connected"})
    tab.wait_for_function("events.length === 1")
    assert tab.evaluate("closedWith") is None and tab.evaluate("db.reconnects") == 0
    assert server.tokens_issued >= 2


def test_an_unread_subscription_fails_with_slow_consumer_after_its_buffer(server, tab):
    tab.evaluate(
        """async ({url, token}) => {
            window.db = await s3db.connect(url, { token, maxPending: 100 });
            window.slow = await db.subscribe("notes", { maxPending: 2 });
            await db.subscribe("notes", {}, (e) => events.push(e.data.title));
        }""",
        {"url": server.ws_url, "token": make_token("erin")},
    )
    for n in range(4):
        server.insert({"title": f"n{n}"})
    tab.wait_for_function("events.length === 4")  # the callback subscription misses nothing
    read = tab.evaluate(
        """async () => {
            const got = [];
            for (let i = 0; i < 4; i++) {
              try { got.push((await slow.next()).value.data.title); }
              catch (err) { got.push(err.code); }
            }
            return { got, closed: slow.closed, limit: db.maxPending };
        }"""
    )
    assert read == {
        "got": ["n0", "n1", "SLOW_CONSUMER", "SLOW_CONSUMER"],
        "closed": True,
        "limit": 100,
    }
    # The server forgot the slow subscription; the callback one still delivers.
    server.insert({"title": "late"})
    tab.wait_for_function("events.length === 5")
    subs = sum(len(conn.subscriptions) for conn in server.plugin.connections)
    assert subs == 1


def test_a_revoked_subscription_rejects_with_forbidden(server, tab):
    tab.evaluate(
        """async ({url, token}) => {
            window.db = await s3db.connect(url, { token });
            window.sub = await db.subscribe("notes", { filter: { roomId: "r1" } });
            window.errors = [];
            db.on("error", (err) => errors.push(err.code));
        }""",
        {"url": server.ws_url, "token": make_token("frank")},
    )
    async def recheck() -> int:
        return await server.plugin.recheck("notes")

    BANNED.add("frank")
    try:
        assert server.run(recheck()) == 1
    finally:
        BANNED.discard("frank")
    got = tab.evaluate(
        """async () => {
            try { await sub.next(); return null; }
            catch (err) { return { code: err.code, details: err.details, closed: sub.closed }; }
        }"""
    )
    assert got == {
        "code": "FORBIDDEN",
        "details": {"resource": "notes", "filter": {"roomId": "r1"}, "revoked": True},
        "closed": True,
    }
    assert "FORBIDDEN" in tab.evaluate("errors") and tab.evaluate("db.state") == "open"


def test_connect_without_a_token_is_told_at_once_that_the_server_requires_one(server, tab):
    # The answer must not come from the authentication deadline (5 s by default).
    server.plugin.session_auth.timeout = 30
    started = time.monotonic()
    error = tab.evaluate(
        """async (url) => {
            try { await s3db.connect(url, { reconnect: false }); return null; }
            catch (err) { return { code: err.code, message: err.message }; }
        }""",
        server.ws_url,
    )
    assert error == {
        "code": "UNAUTHORIZED",
        "message": "this server requires a token (or an API key) and none was given",
    }
    assert time.monotonic() - started < 5


def test_a_record_that_leaves_what_the_user_may_see_arrives_as_leave(server, tab):
    tab.evaluate(
        """async ({url, token}) => {
            window.db = await s3db.connect(url, { token });
            window.room = await db.subscribe("notes", { filter: { roomId: "r1" } });
            window.updates = await db.subscribe("notes", { events: ["update"] });
        }""",
        {"url": server.ws_url, "token": make_token("alice")},
    )
    note = server.insert({"title": "soon hidden", "roomId": "r1"})
    server.run(server.db.resources.notes.update(note["id"], {"title": "secret", "roomId": "hidden"}))
    got = tab.evaluate(
        """async () => [(await room.next()).value, (await room.next()).value,
                        (await updates.next()).value]"""
    )
    assert [(e["event"], e["data"]) for e in got] == [
        ("insert", {**got[0]["data"], "title": "soon hidden"}),
        ("leave", {"id": note["id"]}),
        ("leave", {"id": note["id"]}),
    ]


def test_channels_members_messages_presence_and_rejoin_after_a_restart(server, tab):
    tab.evaluate(
        """async ({url, pages}) => {
            const token = (sub) => async () => (await (await fetch(`${pages}/token?sub=${sub}`)).json()).token;
            const backoff = { initial: 50, maximum: 300 };
            window.ada = await s3db.connect(url, { token: token("ada"), backoff });
            window.bob = await s3db.connect(url, { token: token("bob"), backoff });
            window.reconnected = 0;
            for (const c of [ada, bob]) c.on("reconnect", () => { reconnected += 1; });
            window.adaRoom = await ada.join("room:1", { info: { color: "red" } });
            window.typing = [];
            adaRoom.on("typing", (m) => typing.push([m.from.userId, m.data.on]));
            window.presence = [];
            for (const kind of ["member_added", "member_removed", "member_updated"]) {
              adaRoom.on(kind, (m) => presence.push([m.event, m.data.userId, m.data.info.color ?? null]));
            }
            window.bobRoom = await bob.join("room:1", { info: { color: "blue" }, self: true });
        }""",
        {"url": server.ws_url, "pages": server.pages},
    )
    tab.wait_for_function("presence.length === 1")
    assert tab.evaluate("presence") == [["member_added", "bob", "blue"]]
    members = tab.evaluate("[...adaRoom.members.values()].map((m) => [m.userId, m.info.color]).sort()")
    assert members == [["ada", "red"], ["bob", "blue"]]
    assert tab.evaluate("bobRoom.members.size") == 2

    # Bob types: Ada's listener gets it with Bob's user from the token; Bob (self) iterates his own.
    got = tab.evaluate(
        """async () => {
            await bobRoom.send("typing", { on: true, userId: "mallory" });
            const own = (await bobRoom.next()).value;
            return { event: own.event, from: own.from.userId, data: own.data };
        }"""
    )
    assert got == {"event": "typing", "from": "bob", "data": {"on": True, "userId": "mallory"}}
    tab.wait_for_function("typing.length === 1")
    assert tab.evaluate("typing") == [["bob", True]]

    # Errors: an event the channel does not carry, a channel no pattern declares, joining twice.
    errors = tab.evaluate(
        """async () => {
            const code = async (fn) => { try { await fn(); return null; } catch (err) { return err.code; } };
            return [await code(() => bobRoom.send("cursor", {})), await code(() => bob.join("nowhere")),
                    await code(() => bob.join("room:1"))];
        }"""
    )
    assert errors == ["FORBIDDEN", "FORBIDDEN", "INVALID_MESSAGE"]

    # Bob changes his info, then the server restarts: both rejoin by themselves.
    tab.evaluate("bobRoom.update({ color: 'green' })")
    tab.wait_for_function("presence.length === 2")
    assert tab.evaluate("presence[1]") == ["member_updated", "bob", "green"]
    server.restart()
    tab.wait_for_function("reconnected === 2", timeout=15_000)
    tab.wait_for_function(
        "adaRoom.members.size === 2 && [...adaRoom.members.values()].some((m) => m.info.color === 'green')",
        timeout=15_000,
    )
    assert sorted(m["userId"] for m in server.run(server.plugin.presence("room:1"))) == ["ada", "bob"]
    tab.evaluate("bobRoom.send('typing', { on: false })")
    tab.wait_for_function("typing.length === 2")
    assert tab.evaluate("typing[1]") == ["bob", False]

    # Bob leaves: Ada sees him go; his iterator ends.
    done = tab.evaluate(
        """async () => { await bobRoom.leave(); return (await bobRoom.next()).done; }"""
    )
    assert done is True
    tab.wait_for_function("presence.at(-1)[0] === 'member_removed'")
    assert tab.evaluate("[...adaRoom.members.values()].map((m) => m.userId)") == ["ada"]


def test_a_channel_iterator_gets_messages_and_presence_in_order(server, tab):
    got = tab.evaluate(
        """async ({url, pages}) => {
            const token = (sub) => async () => (await (await fetch(`${pages}/token?sub=${sub}`)).json()).token;
            const ada = await s3db.connect(url, { token: token("ada") });
            const bob = await s3db.connect(url, { token: token("bob") });
            const room = await ada.join("room:2");
            const theirs = await bob.join("room:2", { info: { n: 1 } });
            await theirs.send("message", { text: "hi" });
            await theirs.leave();
            const seen = [];
            for await (const m of room) {
              seen.push([m.event, m.from ? m.from.userId : null, m.data.userId ?? m.data.text]);
              if (seen.length === 3) break;     // break leaves the channel
            }
            return { seen, closed: room.closed, left: !ada._channels.has("room:2") };
        }""",
        {"url": server.ws_url, "pages": server.pages},
    )
    assert got == {
        "seen": [["member_added", None, "bob"], ["message", "bob", "hi"], ["member_removed", None, "bob"]],
        "closed": True,
        "left": True,
    }
