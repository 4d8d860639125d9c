"""The dashboard page at ``/`` in real Chromium: a viewer and an admin watch live charts and alerts."""

from __future__ import annotations

import re

import pytest
from browser_helpers import (
    PHONE,
    chromium,
    cut_placeholders,
    header_problems,
    horizontal_overflow,
    pages_for,
    served,
    shoot,
)
from playwright.sync_api import expect

from examples.dashboard.app import create_app


@pytest.fixture(scope="module")
def chromium_browser():
    with chromium() as browser:
        yield browser


def sign_in(page, name: str, role: str) -> None:
    expect(page.locator(".dev-banner")).to_contain_text("DEV ONLY")
    page.fill("#login-name", name)
    page.select_option("#login-role", role)
    page.click("#login button[type=submit]")
    expect(page.locator("#connection")).to_have_text("connected")
    expect(page.locator("#whoami")).to_contain_text(f"{name} ({role}")


def points(page, type: str) -> int:
    return int(page.locator(f"#chart-{type}").get_attribute("data-points") or 0)


def test_live_charts_with_axes_and_acknowledgements(request, chromium_browser):
    with served(create_app, metric_every=0.25) as server, pages_for(request, chromium_browser) as pages:
        viewer = pages.new(f"{server.http_url}/", viewport=PHONE)
        admin = pages.new(f"{server.http_url}/")
        sign_in(viewer, "vic", "viewer")
        sign_in(admin, "ada", "admin")

        # The charts grow with every simulated sample, live.
        for type in ("cpu", "memory"):
            expect(viewer.locator(f"#chart-{type}")).to_have_attribute("data-points", re.compile(r"^[1-9]"))
        seen = points(admin, "cpu")
        admin.wait_for_function("n => Number(document.querySelector('#chart-cpu').dataset.points) > n", arg=seen)
        line, count = admin.evaluate(
            """() => [document.querySelector('#chart-cpu polyline.line').getAttribute('points'),
                      Number(document.querySelector('#chart-cpu').dataset.points)]"""
        )
        assert len(line.split()) == count >= 2
        assert 0 <= float(admin.locator("#cpu-value").inner_text()) <= 100
        assert 0 <= float(admin.locator("#memory-value").inner_text()) <= 16384

        # Real axes: values from 0 to the metric's maximum, and clock times along the bottom.
        expect(admin.locator("#chart-cpu .y-axis text")).to_have_text(["0", "20", "40", "60", "80", "100"])
        expect(admin.locator("#chart-memory .y-axis text").first).to_have_text("0")
        times = admin.locator("#chart-cpu .x-axis text").all_text_contents()
        assert len(times) >= 2 and all(re.fullmatch(r"\d\d:\d\d:\d\d(\s?[AP]M)?", t) for t in times), times

        # An alert arrives on both pages; only the admin may acknowledge it.
        alert = server.call(
            lambda: server.db.resources.alerts.insert(
                {"severity": "critical", "message": "disk full on db-1", "source": "db-1"}
            )
        )
        viewer_row = viewer.locator(f".alert[data-alert-id='{alert['id']}']")
        admin_row = admin.locator(f".alert[data-alert-id='{alert['id']}']")
        expect(viewer_row).to_contain_text("disk full on db-1")
        expect(viewer_row.locator("button.acknowledge")).to_be_disabled()
        shoot(admin, "dashboard-desktop")
        shoot(viewer, "dashboard-phone")
        admin_row.locator("button.acknowledge").click()

        # The acknowledgement shows up on the viewer's page, with who did it.
        for row in (admin_row, viewer_row):
            expect(row.locator(".acknowledged-by")).to_have_text("acknowledged by ada")
            expect(row.locator("button.acknowledge")).to_have_count(0)
        stored = server.call(lambda: server.db.resources.alerts.get(alert["id"]))
        assert (stored["acknowledged"], stored["acknowledgedBy"]) == (True, "ada")
        assert horizontal_overflow(viewer) == 0
        assert header_problems(viewer) == []  # as on every page: who is signed in, then Sign out at the right
        assert cut_placeholders(viewer) == [] and cut_placeholders(admin) == []
        assert pages.errors() == []
