"""``/client.js`` resumes by itself in real headless Chromium: after a real server restart it
resubscribes since the last position it saw and gets exactly what it missed (a shared broker
keeps the stream), or is told to reload when the new process cannot replay it (``local``)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from collections.abc import Iterator

import pytest
from browser_helpers import CHROMIUM, CHROMIUM_ARGS
from test_client_js import SECRET, Server, make_token

from s3db_core import Database
from s3db_ws_plugin import WebSocketPlugin

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and shutil.which("chromium") is None,
    reason="Debian chromium is not installed (make test installs it)",
)
ENGINES = [e for e in ("local", "redis") if importlib.util.find_spec(f"s3db_core.brokers.{e}")]


class BrokerServer(Server):
    """The browser tests' server on a given broker; a restart is a new Database and plugin on
    the same port, store and broker."""

    def __init__(self, broker: str) -> None:
        self.broker = broker
        super().__init__()

    async def start_app(self, port: int = 0) -> None:
        db = Database(f"memory://{self.name}", broker=self.broker)
        await db.connect()
        await db.create_resource(
            "notes", {"title": "string|required", "roomId": "string|optional"}, timestamps=True
        )
        plugin = WebSocketPlugin(
            port=port,
            auth={"required": True, "drivers": [{"driver": "jwt", "config": {"secret": SECRET}}]},
            resources={"notes": True},
        )
        await db.use_plugin(plugin)
        self.db, self.plugin = db, plugin

    def write_while_down(self, titles: list[str]) -> None:
        """Writes by another process-like Database on the same store and broker."""

        async def write() -> None:
            db = Database(f"memory://{self.name}", broker=self.broker)
            await db.connect()
            notes = await db.create_resource(
                "notes", {"title": "string|required", "roomId": "string|optional"}, timestamps=True
            )
            for title in titles:
                await notes.insert({"title": title, "roomId": "r1"})
            await notes.insert({"title": "elsewhere", "roomId": "r2"})
            await db.disconnect()

        self.run(write())


@pytest.fixture(params=ENGINES)
def broker_server(request: pytest.FixtureRequest) -> Iterator[BrokerServer]:
    if request.param == "local":
        broker = "local"
    else:
        broker = f"{request.getfixturevalue('redis_url')}?prefix=js{uuid.uuid4().hex[:10]}"
    srv = BrokerServer(broker)
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
def page(chromium, broker_server):
    context = chromium.new_context()
    tab = context.new_page()
    tab.goto(broker_server.page_url())
    tab.wait_for_function("window.s3db !== undefined", timeout=10_000)
    yield tab
    context.close()


def test_client_js_resumes_after_a_server_restart(broker_server, page):
    page.evaluate(
        """async ({url, token}) => {
            window.db = await s3db.connect(url, { token, backoff: { initial: 50, maximum: 200 } });
            window.reloads = 0;
            window.reconnected = 0;
            db.on("reconnect", () => { reconnected += 1; });
            window.sub = await db.subscribe("notes", {
              filter: { roomId: "r1" }, onReload: () => { reloads += 1; },
            });
            window.seen = [];
            (async () => { for await (const e of sub) seen.push([e.event, e.data.title ?? null]); })();
        }""",
        {"url": broker_server.ws_url, "token": make_token("alice")},
    )
    broker_server.insert({"title": "before", "roomId": "r1"})
    page.wait_for_function("seen.length === 1")
    assert page.evaluate("sub.position.offset") == 1

    broker_server.run(broker_server.stop_app())  # 1001 to every socket
    broker_server.write_while_down(["missed-1", "missed-2"])
    broker_server.run(broker_server.start_app(broker_server.plugin.port))
    page.wait_for_function("reconnected === 1", timeout=10_000)
    broker_server.insert({"title": "after", "roomId": "r1"})
    if broker_server.broker == "local":  # a new process: its stream cannot replay the gap
        page.wait_for_function("seen.length === 3")
        assert page.evaluate("seen") == [
            ["insert", "before"],
            ["reload", None],
            ["insert", "after"],
        ]
        assert page.evaluate("reloads") == 1 and page.evaluate("sub.recovered") is False
    else:  # the shared stream replays exactly what was missed, then goes on live
        page.wait_for_function("seen.length === 4")
        assert page.evaluate("seen") == [
            ["insert", "before"],
            ["insert", "missed-1"],
            ["insert", "missed-2"],
            ["insert", "after"],
        ]
        assert page.evaluate("reloads") == 0 and page.evaluate("sub.recovered") is True


def test_client_js_snapshot_then_stream(broker_server, page):
    broker_server.insert({"title": "a", "roomId": "r1"})
    got = page.evaluate(
        """async ({url, token}) => {
            window.db = await s3db.connect(url, { token });
            window.sub = await db.subscribe("notes", { snapshot: true, limit: 10 });
            return { titles: sub.snapshot.map((r) => r.title), cursor: sub.cursor,
                     offset: sub.position.offset };
        }""",
        {"url": broker_server.ws_url, "token": make_token("bob")},
    )
    assert got == {"titles": ["a"], "cursor": None, "offset": 1}
    broker_server.insert({"title": "b", "roomId": "r1"})
    event = page.evaluate("async () => (await sub.next()).value")
    assert (event["event"], event["data"]["title"], event["offset"]) == ("insert", "b", 2)
