"""The chat page at ``/`` in real Chromium: two people chat, at desktop and phone widths."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from browser_helpers import (
    PHONE,
    chromium,
    cut_placeholders,
    header_problems,
    horizontal_overflow,
    outside_viewport,
    pages_for,
    served,
    shoot,
    vertical_overflow,
)
from playwright.sync_api import expect

from examples.chat.app import create_app


@pytest.fixture(scope="module")
def chromium_browser():
    with chromium() as browser:
        yield browser


def sign_in(page, name: str) -> None:
    expect(page.locator(".dev-banner")).to_contain_text("DEV ONLY")
    page.fill("#login-name", name)
    page.click("#login button[type=submit]")
    expect(page.locator("#connection")).to_have_text("connected")


def create_room(page, name: str, *, private_with: str | None = None) -> None:
    page.fill("#room-name", name)
    if private_with is not None:
        page.check("#room-private")
        page.fill("#room-members", private_with)
    page.click("#new-room button[type=submit]")
    expect(page.locator("#room-title")).to_have_text(("🔒 " if private_with is not None else "# ") + name)


def test_two_people_chat_and_see_each_other_typing(request, chromium_browser):
    with served(create_app) as server, pages_for(request, chromium_browser) as pages:
        alice = pages.new(f"{server.http_url}/")
        bob = pages.new(f"{server.http_url}/", viewport=PHONE)
        sign_in(alice, "alice")
        sign_in(bob, "bob")

        # Alice creates a room; Bob (on a phone) sees it appear in his room list and opens it.
        create_room(alice, "general")
        bob.click("#rooms button:has-text('general')")
        expect(bob.locator("#room-title")).to_have_text("# general")
        for page in (alice, bob):  # who is in the room: the room's channel's presence
            expect(page.locator("#present li")).to_have_text(["alice", "bob"])
        expect(alice.locator("#present li.me")).to_have_text("alice")

        # Alice types: Bob sees it; she sends: Bob gets the message and the indicator goes.
        alice.locator("#message").press_sequentially("hi bob")
        expect(bob.locator("#typing")).to_have_text("alice is typing…")
        expect(alice.locator("#typing")).to_have_text("")  # nobody else is typing
        alice.press("#message", "Enter")
        for page in (alice, bob):
            expect(page.locator("#messages li .content")).to_have_text(["hi bob"])
            expect(page.locator("#messages li .author")).to_have_text(["alice"])
        expect(bob.locator("#typing")).to_have_text("")
        expect(alice.locator("#messages li.mine")).to_have_count(1)  # her own, on her side
        expect(bob.locator("#messages li.mine")).to_have_count(0)

        # Bob starts typing and stops: Alice sees him typing until his last announcement is
        # a few seconds old (nothing was stored, nothing is swept).
        bob.locator("#message").press_sequentially("hmm")
        expect(alice.locator("#typing")).to_have_text("bob is typing…")
        expect(alice.locator("#typing")).to_have_text("", timeout=15_000)
        assert server.call(lambda: server.db.resources.typing_indicators.count()) == 0
        bob.locator("#message").press_sequentially(", hello alice, " + "a-very-long-word-" * 8)
        bob.click("#composer button[type=submit]")
        expect(alice.locator("#messages li .content")).to_have_count(2)
        expect(alice.locator("#messages li .content").nth(1)).to_contain_text("hmm, hello alice")
        assert horizontal_overflow(bob) == 0  # a long word wraps; the phone never scrolls sideways
        assert cut_placeholders(alice) == []  # the new-room form's placeholders fit the side bar
        assert cut_placeholders(bob) == []
        assert header_problems(bob) == []
        shoot(alice, "chat-desktop")
        shoot(bob, "chat-phone")

        # Carol arrives later and gets the history; everyone sees her arrive, then leave.
        carol = pages.new(f"{server.http_url}/")
        sign_in(carol, "carol")
        carol.click("#rooms button:has-text('general')")
        expect(carol.locator("#messages li .author")).to_have_text(["alice", "bob"])
        expect(alice.locator("#present li")).to_have_text(["alice", "bob", "carol"])
        carol.close()
        expect(alice.locator("#present li")).to_have_text(["alice", "bob"])


def test_a_typing_burst_costs_no_store_request(request, chromium_browser):
    """Typing travels on the room's channel: the store sees nothing of it (through the original's
    typing_indicators resource every announcement was a PUT, plus the sweeps)."""
    with served(create_app, cleanup_every=3600) as server, pages_for(request, chromium_browser) as pages:
        alice, bob = pages.new(f"{server.http_url}/"), pages.new(f"{server.http_url}/")
        sign_in(alice, "alice")
        sign_in(bob, "bob")
        create_room(alice, "quiet")
        bob.click("#rooms button:has-text('quiet')")
        expect(alice.locator("#present li")).to_have_text(["alice", "bob"])
        requests = server.db.storage.requests
        requests.reset()
        # About 5 s of typing: several "typing" announcements (one per 2 s at most).
        alice.locator("#message").press_sequentially("a burst of typing, " * 3, delay=80)
        expect(bob.locator("#typing")).to_have_text("alice is typing…")
        alice.locator("#message").fill("")
        expect(bob.locator("#typing")).to_have_text("", timeout=15_000)
        assert requests.snapshot() == {}
        assert pages.errors() == []


def post(server, room, author: str, content: str) -> None:
    """A message written on the server side (as the announce script does)."""
    data = {"roomId": room["id"], "userId": author, "username": author, "content": content}
    server.call(lambda: server.db.resources.chat_messages.insert(data))


def test_on_a_phone_the_message_box_stays_in_view(request, chromium_browser):
    """At 390x844 an open room takes the screen: only the messages scroll, the box stays put."""
    with served(create_app) as server, pages_for(request, chromium_browser) as pages:
        room = server.call(lambda: server.db.resources.chat_rooms.insert({"name": "busy", "createdBy": "ann"}))
        for i in range(40):
            post(server, room, "ann", f"message {i} " + "words " * (i % 7))
        bob = pages.new(f"{server.http_url}/", viewport=PHONE)
        sign_in(bob, "bob")
        assert header_problems(bob) == []
        assert cut_placeholders(bob) == []

        bob.click("#rooms button:has-text('busy')")
        expect(bob.locator("#room-title")).to_have_text("# busy")
        expect(bob.locator("#messages li")).to_have_count(40)
        box = bob.locator("#message")
        assert outside_viewport(box) is None
        assert outside_viewport(bob.locator("#room-title")) is None
        assert vertical_overflow(bob) == 0  # the page itself does not scroll: the messages do
        messages = bob.locator("#messages")
        assert messages.evaluate("(el) => el.scrollHeight > el.clientHeight")
        assert outside_viewport(bob.locator("#messages li").last) is None  # the newest, in view
        shoot(bob, "chat-phone-room")

        # Scrolling back through the history, and new messages arriving, leave the box in place.
        messages.hover()
        bob.mouse.wheel(0, -3000)
        bob.mouse.wheel(0, 3000)
        post(server, room, "ann", "one more")
        expect(bob.locator("#messages li .content").last).to_have_text("one more")
        assert outside_viewport(box) is None
        box.fill("typed on the phone")
        box.press("Enter")
        expect(bob.locator("#messages li.mine .content")).to_have_text(["typed on the phone"])
        assert outside_viewport(box) is None
        assert vertical_overflow(bob) == 0

        # "Rooms" goes back to the list; a room opened from its link takes the screen again.
        bob.click("#back-to-rooms")
        expect(bob.locator("#rooms button:has-text('busy')")).to_be_visible()
        expect(box).to_be_hidden()
        bob.goto(f"{server.http_url}/#room={room['id']}")
        expect(bob.locator("#messages li")).to_have_count(42)
        assert outside_viewport(box) is None
        assert vertical_overflow(bob) == 0
        assert horizontal_overflow(bob) == 0
        assert pages.errors() == []


def slow_writes(server, resource: str, seconds: float) -> None:
    """Make every insert into ``resource`` take ``seconds`` longer, like a distant S3 store."""
    records = server.db.resources[resource]
    insert = records.insert

    async def slow_insert(*args, **kwargs):
        await asyncio.sleep(seconds)
        return await insert(*args, **kwargs)

    records.insert = slow_insert


def test_text_typed_right_after_enter_is_kept(request, chromium_browser):
    """Enter sends the message; what is typed while it travels starts the next one, untouched."""
    with served(create_app) as server, pages_for(request, chromium_browser) as pages:
        slow_writes(server, "chat_messages", 0.05)
        alice, bob = pages.new(f"{server.http_url}/"), pages.new(f"{server.http_url}/")
        sign_in(alice, "alice")
        sign_in(bob, "bob")
        create_room(alice, "fast")
        bob.click("#rooms button:has-text('fast')")
        box = alice.locator("#message")
        sent = [f"message {i}" for i in range(6)]
        for text in sent:  # no waiting between Enter and the next keys: a fast typist
            box.press_sequentially(text)
            box.press("Enter")
        box.press_sequentially("and still typing")
        expect(bob.locator("#messages li .content")).to_have_count(len(sent))
        assert sorted(bob.locator("#messages li .content").all_inner_texts()) == sorted(sent)
        expect(box).to_have_value("and still typing")


def test_private_rooms_stay_private(request, chromium_browser):
    with served(create_app) as server, pages_for(request, chromium_browser) as pages:
        alice = pages.new(f"{server.http_url}/")
        carol = pages.new(f"{server.http_url}/", viewport=PHONE)
        sign_in(alice, "alice")
        sign_in(carol, "carol")
        create_room(alice, "plans", private_with="bob")
        alice.fill("#message", "the secret plan")
        alice.press("#message", "Enter")
        expect(alice.locator("#messages li .content")).to_have_text(["the secret plan"])
        create_room(alice, "lobby")
        expect(alice.locator("#rooms button")).to_have_text(["# lobby", "🔒 plans"])

        # Carol's room list shows the public room only; opening the private one by URL finds nothing.
        expect(carol.locator("#rooms button")).to_have_text(["# lobby"])
        plans = server.call(lambda: server.db.resources.chat_rooms.query({"name": "plans"}))[0]
        carol.goto(f"{server.http_url}/#room={plans['id']}")
        expect(carol.locator("#status")).to_contain_text("NOT_FOUND")  # a private room looks missing
        expect(carol.locator("#messages li")).to_have_count(0)
        expect(carol.locator("#rooms button")).to_have_text(["# lobby"])
        assert horizontal_overflow(carol) == 0
        assert pages.errors() == []


def test_page_assets_favicon_and_old_address(request, chromium_browser):
    with served(create_app) as server:
        with urllib.request.urlopen(f"{server.http_url}/favicon.ico") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "image/x-icon"
            assert resp.read(4) == b"\0\0\1\0"  # an ICO file
        with urllib.request.urlopen(f"{server.http_url}/chat") as resp:  # where the page used to be
            assert resp.url == f"{server.http_url}/"
            assert "s3db chat" in resp.read().decode()
        with pages_for(request, chromium_browser) as pages:
            page = pages.new(viewport=PHONE)
            failed: list[str] = []
            page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
            page.goto(f"{server.http_url}/")
            sign_in(page, "dora")
            expect(page.locator("#no-room")).to_be_visible()
            assert failed == []
            assert horizontal_overflow(page) == 0
            assert pages.errors() == []


def test_without_dev_the_page_says_how_to_sign_in(request, chromium_browser):
    with served(create_app, dev=False) as server, pages_for(request, chromium_browser) as pages:
        page = pages.new(f"{server.http_url}/")
        page.fill("#login-name", "alice")
        page.click("#login button[type=submit]")
        expect(page.locator("#login-error")).to_contain_text("start the example with --dev")
        expect(page.locator("#app")).to_be_hidden()
