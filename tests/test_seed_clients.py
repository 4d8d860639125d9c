"""The seed's own JavaScript clients, socket code unchanged, in real headless Chromium against the
running examples: the React ``ChatRoom`` component (React 18 from npm) and ``DashboardClient``.

The files under tests/seed_clients/ are the seed's code: ``DashboardClient.js`` verbatim, and
``ChatRoom.js`` with its state, effect and handlers verbatim (only the ``import`` line and the JSX
``return`` are rewritten for a browser without a JSX compiler). ``test_the_copies_are_the_seeds``
checks that against the seed document when it is present.

The seed's ``ChatRoom`` connects to the hard-coded ``ws://localhost:3001``: Chromium's
``--host-resolver-rules`` maps ``localhost:3001`` to the test server's free port, so the component
runs untouched. The harness pages and React are served by a small loopback file server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from browser_helpers import chromium, pages_for, served, static_files
from playwright.sync_api import expect

from examples.chat.app import create_app as create_chat
from examples.dashboard.app import create_app as create_dashboard

HERE = Path(__file__).resolve().parent
SEED_CLIENTS = HERE / "seed_clients"
NODE_MODULES = SEED_CLIENTS / "node_modules"
SEED_DOC = HERE.parents[1] / "shared" / "seed" / "websocket-plugin-examples.md"
FILES = {
    "chat_room.html": SEED_CLIENTS / "chat_room.html",
    "ChatRoom.js": SEED_CLIENTS / "ChatRoom.js",
    "dashboard_client.html": SEED_CLIENTS / "dashboard_client.html",
    "DashboardClient.js": SEED_CLIENTS / "DashboardClient.js",
    "react.development.js": NODE_MODULES / "react" / "umd" / "react.development.js",
    "react-dom.development.js": NODE_MODULES / "react-dom" / "umd" / "react-dom.development.js",
}


@pytest.fixture(scope="module", autouse=True)
def react_from_npm() -> None:
    missing = [str(p) for p in FILES.values() if not p.exists()]
    if missing:
        pytest.fail(
            "React 18 is not installed for the seed-client tests: run `make seed-clients` "
            f"(npm ci in {SEED_CLIENTS.relative_to(HERE.parent)}); missing {missing}"
        )


@pytest.fixture(scope="module")
def seed_origin() -> Iterator[str]:
    """Where tests/seed_clients (and React's UMD builds) are served: ``<origin>/<file>``."""
    with static_files(FILES) as origin:
        yield origin


def frames_of(page: Any) -> list[dict[str, Any]]:
    """Every frame the page's WebSockets receive (parsed), as it arrives."""
    frames: list[dict[str, Any]] = []

    def on_socket(ws: Any) -> None:
        ws.on("framereceived", lambda payload: frames.append(json.loads(payload)))

    page.on("websocket", on_socket)
    return frames


def forbidden(frames: list[dict[str, Any]]) -> int:
    return sum(1 for f in frames if f.get("type") == "error" and f.get("code") == "FORBIDDEN")


# -- the React ChatRoom -------------------------------------------------------------------------
@pytest.fixture
def chat() -> Iterator[Any]:
    with served(create_chat, typing_ttl=1.0, cleanup_every=0.2) as server:
        yield server


def chat_room_url(origin: str, room_id: str, token: str) -> str:
    return f"{origin}/chat_room.html?" + urlencode({"roomId": room_id, "token": token})


def test_seed_chatroom_component_chats_with_history_and_typing(request, chat, seed_origin):
    db = chat.db
    room = chat.call(lambda: db.resources.chat_rooms.insert({"name": "general", "createdBy": "alice"}))
    older = [("bob", f"message {n}") for n in range(1, 59)]  # 60 in all: 10 are past the history
    for author, text in [*older, ("alice", "first"), ("bob", "second")]:
        chat.call(
            lambda author=author, text=text: db.resources.chat_messages.insert(
                {"roomId": room["id"], "userId": author, "username": author.title(), "content": text}
            )
        )
    rules = f"--host-resolver-rules=MAP localhost:3001 127.0.0.1:{chat.port}"
    with chromium(rules) as browser, pages_for(request, browser) as pages:
        alice, bob = pages.new(), pages.new()
        for page, name in ((alice, "alice"), (bob, "bob")):
            page.goto(chat_room_url(seed_origin, room["id"], chat.token(name, name=name.title())))

        # History: the component's `list` with requestId 'history' takes 50 and reverses them:
        # the room serves newest first, so the page shows the latest 50, oldest at the top.
        for page in (alice, bob):
            expect(page.locator(".message")).to_have_count(50)
            shown = page.locator(".message").all_inner_texts()
            assert shown == [f"Bob: message {n}" for n in range(11, 59)] + [
                "Alice: first", "Bob: second"
            ]

        # Bob types: every keystroke is the seed's typing insert; both see "Bob typing...".
        bob.locator(".input input").press_sequentially("hi alice")
        for page in (alice, bob):
            expect(page.locator(".typing")).to_have_text("Bob typing...")
        # Enter sends through the seed's sendMessage; the guard sets who sent it.
        bob.locator(".input input").press("Enter")
        for page in (alice, bob):
            expect(page.locator(".message").last).to_have_text("Bob: hi alice")
        expect(bob.locator(".input input")).to_have_value("")
        # The server's cleanup deletes the expired indicators: the delete events clear them.
        for page in (alice, bob):
            expect(page.locator(".typing")).to_have_count(0, timeout=5_000)

        alice.locator(".input input").fill("hello bob")
        alice.locator("button", has_text="Send").click()
        expect(bob.locator(".message").last).to_have_text("Alice: hello bob")
        stored = chat.call(lambda: db.resources.chat_messages.query({"roomId": room["id"]}))
        assert len(stored) == 62
        assert sorted(
            (m["userId"], m["content"]) for m in stored if not m["content"].startswith("message")
        ) == [("alice", "first"), ("alice", "hello bob"), ("bob", "hi alice"), ("bob", "second")]


def test_seed_chatroom_component_of_an_outsider_gets_nothing_from_a_private_room(request, chat, seed_origin):
    db = chat.db
    room = chat.call(
        lambda: db.resources.chat_rooms.insert(
            {"name": "plans", "isPrivate": True, "members": ["alice", "bob"], "createdBy": "alice"}
        )
    )
    chat.call(
        lambda: db.resources.chat_messages.insert(
            {"roomId": room["id"], "userId": "alice", "username": "Alice", "content": "old secret"}
        )
    )
    rules = f"--host-resolver-rules=MAP localhost:3001 127.0.0.1:{chat.port}"
    with chromium(rules) as browser, pages_for(request, browser) as pages:
        bob, carol = pages.new(), pages.new()
        carol_frames = frames_of(carol)
        for page, name in ((bob, "bob"), (carol, "carol")):
            page.goto(chat_room_url(seed_origin, room["id"], chat.token(name, name=name.title())))
        expect(bob.locator(".message")).to_have_text(["Alice: old secret"])

        # Carol's two subscribes and the history list are refused...
        wait_until(carol, lambda: forbidden(carol_frames) >= 3)
        # ...and so is every typing insert her keystrokes send: Bob never sees her typing.
        carol.locator(".input input").press_sequentially("hey")
        wait_until(carol, lambda: forbidden(carol_frames) >= 6)
        carol.locator(".input input").press("Enter")
        wait_until(carol, lambda: forbidden(carol_frames) >= 7)

        chat.call(
            lambda: db.resources.chat_messages.insert(
                {"roomId": room["id"], "userId": "bob", "username": "Bob", "content": "new secret"}
            )
        )
        expect(bob.locator(".message")).to_have_text(["Alice: old secret", "Bob: new secret"])
        expect(bob.locator(".typing")).to_have_count(0)
        expect(carol.locator(".message")).to_have_count(0)
        leaked = [f for f in carol_frames if f.get("type") in ("event", "data")]
        assert leaked == []
        assert chat.call(lambda: db.resources.typing_indicators.query({"userId": "carol"})) == []


def wait_until(page: Any, condition: Any, timeout: float = 5.0) -> None:
    """Let the page's event loop run (frames are delivered meanwhile) until ``condition()``."""
    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        page.wait_for_timeout(50)
        waited += 0.05


# -- DashboardClient ----------------------------------------------------------------------------
def test_seed_dashboard_client_tracks_metrics_and_acknowledgements(request, seed_origin):
    with served(create_dashboard, metric_every=0.25) as server, chromium() as browser, pages_for(
        request, browser
    ) as pages:
        clients = {}
        for name, role in (("ada", "admin"), ("vic", "viewer")):
            page = pages.new()
            page.goto(f"{seed_origin}/dashboard_client.html")
            clients[name] = (page, frames_of(page))
            page.evaluate(
                "([url, token]) => startDashboard(url, token)",
                [server.ws_url, server.token(name, name=name.title(), role=role)],
            )
        admin, admin_frames = clients["ada"]
        viewer, viewer_frames = clients["vic"]

        # Metrics from the simulation land in `metrics['server-1:cpu' / 'server-1:memory']`.
        for page in (admin, viewer):
            page.wait_for_function(
                "() => client.metrics['server-1:cpu'] && client.metrics['server-1:memory']"
            )
            cpu = page.evaluate("client.metrics['server-1:cpu']")
            assert 0 <= cpu["value"] <= 100 and cpu["timestamp"] > 0
            assert page.evaluate("updates.length") >= 2

        # A new alert reaches both clients' `alerts`.
        alert = server.call(
            lambda: server.db.resources.alerts.insert(
                {"severity": "critical", "message": "disk full", "source": "db-1"}
            )
        )
        find = "id => client.alerts.find(a => a.id === id)"
        for page in (admin, viewer):
            page.wait_for_function(f"id => ({find})(id)", arg=alert["id"])

        # The viewer's acknowledgeAlert is refused by the server; nothing changes.
        viewer.evaluate("id => client.acknowledgeAlert(id)", alert["id"])
        wait_until(viewer, lambda: forbidden(viewer_frames) == 1)
        assert server.call(lambda: server.db.resources.alerts.get(alert["id"]))["acknowledged"] is False

        # The admin's goes through: both clients replace the alert with the acknowledged one.
        admin.evaluate("id => client.acknowledgeAlert(id)", alert["id"])
        for page in (admin, viewer):
            page.wait_for_function(f"id => ({find})(id).acknowledged === true", arg=alert["id"])
            acked = page.evaluate(find, alert["id"])
            assert acked["acknowledgedBy"] == "ada"
        assert forbidden(admin_frames) == 0
        assert server.call(lambda: server.db.resources.alerts.get(alert["id"]))["acknowledgedBy"] == "ada"


# -- the copies are the seed's code ------------------------------------------------------------
def seed_blocks() -> list[str]:
    if not SEED_DOC.exists():
        pytest.skip(f"the seed document is not beside the repository ({SEED_DOC})")
    return re.findall(r"```\w*\n(.*?)```", SEED_DOC.read_text(), re.S)


def test_the_copies_are_the_seeds():
    blocks = seed_blocks()
    dashboard = next(b for b in blocks if "class DashboardClient" in b)
    assert (SEED_CLIENTS / "DashboardClient.js").read_text() == dashboard

    chat_room = next(b for b in blocks if "function ChatRoom" in b)
    seed_logic = chat_room.split("\n", 1)[1].split("  return (\n")[0]  # minus import and JSX
    ours = (SEED_CLIENTS / "ChatRoom.js").read_text()
    assert chat_room.startswith("import { useState, useEffect, useCallback, useRef } from 'react';\n")
    assert "const { useState, useEffect, useCallback, useRef } = React;\n" + seed_logic in ours
