"""Every example's page at ``/`` in real Chromium, before anyone signs in, at phone width.

(Browser tests live apart from async ones: Playwright's sync API runs its own event loop.)
"""

from __future__ import annotations

import importlib

import pytest
from browser_helpers import PHONE, chromium, horizontal_overflow, pages_for, served
from playwright.sync_api import expect

NAMES = ("chat", "dashboard", "collab", "notifications", "iot", "multitenant", "leaderboard")


@pytest.fixture(scope="module")
def chromium_browser():
    with chromium() as browser:
        yield browser


@pytest.mark.parametrize("name", NAMES)
def test_every_page_opens_cleanly_on_a_phone(request, chromium_browser, name):
    """Before anyone signs in: every asset loads, nothing logs an error, nothing scrolls sideways."""
    create_app = importlib.import_module(f"examples.{name}.app").create_app
    with served(create_app) as server, pages_for(request, chromium_browser) as pages:
        page = pages.new(viewport=PHONE)
        failed: list[str] = []
        page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.goto(f"{server.http_url}/")
        expect(page.locator(".dev-banner")).to_contain_text("DEV ONLY")
        expect(page.locator("#login")).to_be_visible()
        assert failed == []
        assert pages.errors() == []
        assert horizontal_overflow(page) == 0
