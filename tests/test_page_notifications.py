"""The notifications page at ``/`` in real Chromium: a bell with the unread count and a live list."""

from __future__ import annotations

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
)
from playwright.sync_api import expect

from examples.notifications.app import create_app, send_notification
from s3db_core import Change, hookimpl


@pytest.fixture(scope="module")
def chromium_browser():
    with chromium() as browser:
        yield browser


class CountUpdates:
    """Counts the notification updates the server stores."""

    def __init__(self) -> None:
        self.updates = 0

    @hookimpl
    def s3db_change(self, change: Change) -> None:
        if change.resource == "notifications" and change.event == "update":
            self.updates += 1


def sign_in(page, name: str) -> None:
    expect(page.locator(".dev-banner")).to_contain_text("DEV ONLY")
    page.fill("#login-name", name)
    page.click("#login button[type=submit]")
    expect(page.locator("#connection")).to_have_text("connected")
    expect(page.locator("#bell")).to_be_visible()  # the page has loaded what there is


def open_panel(page) -> None:
    if page.locator("#panel").is_hidden():
        page.click("#bell")
    expect(page.locator("#panel")).to_be_visible()


def test_a_notification_reaches_only_its_recipient_and_is_read_once(request, chromium_browser):
    with served(create_app) as server, pages_for(request, chromium_browser) as pages:
        counter = CountUpdates()
        server.call(lambda: server.db.use_plugin(counter))
        ann = pages.new(f"{server.http_url}/")
        ben = pages.new(f"{server.http_url}/", viewport=PHONE)
        sign_in(ann, "ann")
        sign_in(ben, "ben")
        expect(ben.locator("#unread-count")).to_be_hidden()

        # Ann notifies Ben from her page: Ben's bell counts it, Ann's stays quiet.
        ann.fill("#send-to", "ben")
        ann.fill("#send-title", "Lunch?")
        ann.fill("#send-body", "at noon, the usual place")
        ann.click("#send button[type=submit]")
        expect(ann.locator("#sent")).to_contain_text("Sent to ben")
        expect(ben.locator("#unread-count")).to_have_text("1")
        open_panel(ben)
        expect(ben.locator("#notifications li.unread .title")).to_have_text(["Lunch?"])
        expect(ben.locator("#notifications li.unread .when")).to_contain_text("from ann")
        open_panel(ann)
        expect(ann.locator("#notifications li")).to_have_count(0)
        expect(ann.locator("#unread-count")).to_be_hidden()
        shoot(ben, "notifications-phone")

        # Ben opens it: read, once. Its update event comes back and marks nothing again.
        ben.click("#notifications li.unread button")
        expect(ben.locator("#unread-count")).to_be_hidden()
        expect(ben.locator("#notifications li.read")).to_have_count(1)
        # A later notification is a barrier: the page has handled every event before it.
        server.call(lambda: send_notification(server.db, "ben", {"type": "system", "title": "Backup done"}))
        expect(ben.locator("#unread-count")).to_have_text("1")
        expect(ben.locator("#notifications li .title")).to_have_text(["Backup done", "Lunch?"])
        assert counter.updates == 1

        # "Mark all read" writes only the unread one.
        server.call(lambda: send_notification(server.db, "ben", {"type": "system", "title": "Disk 80%"}))
        expect(ben.locator("#unread-count")).to_have_text("2")
        ben.click("#mark-all")
        expect(ben.locator("#unread-count")).to_be_hidden()
        server.call(lambda: send_notification(server.db, "ben", {"type": "system", "title": "barrier"}))
        expect(ben.locator("#unread-count")).to_have_text("1")
        assert counter.updates == 3
        shoot(ann, "notifications-desktop")
        assert horizontal_overflow(ben) == 0
        assert header_problems(ben) == []
        assert cut_placeholders(ann) == [] and cut_placeholders(ben) == []
        assert pages.errors() == []


def test_on_a_phone_the_list_shows_first(request, chromium_browser):
    """At 390x844 the notifications are what the page opens on, not only the form to send one."""
    with served(create_app) as server, pages_for(request, chromium_browser) as pages:
        for title in ("Welcome", "Backup done"):
            server.call(lambda title=title: send_notification(server.db, "ben", {"type": "system", "title": title}))
        ben = pages.new(f"{server.http_url}/", viewport=PHONE)
        sign_in(ben, "ben")
        expect(ben.locator("#notifications li .title")).to_have_text(["Backup done", "Welcome"])
        assert outside_viewport(ben.locator("#panel h2")) is None
        assert outside_viewport(ben.locator("#notifications li").first) is None
        expect(ben.locator("#bell")).to_have_attribute("aria-expanded", "true")
        ben.click("#bell")  # the bell still folds the list away, and opens it again
        expect(ben.locator("#panel")).to_be_hidden()
        ben.click("#bell")
        expect(ben.locator("#notifications li")).to_have_count(2)
        assert header_problems(ben) == []
        assert pages.errors() == []
