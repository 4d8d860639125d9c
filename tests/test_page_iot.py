"""The IoT page at ``/`` in real Chromium: each owner watches their own devices' readings, live."""

from __future__ import annotations

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

from examples.iot.app import create_app, register_device


@pytest.fixture(scope="module")
def chromium_browser():
    with chromium() as browser:
        yield browser


def sign_in(page, name: str) -> None:
    expect(page.locator(".dev-banner")).to_contain_text("DEV ONLY")
    page.fill("#login-name", name)
    page.click("#login button[type=submit]")
    expect(page.locator("#connection")).to_have_text("connected")


def test_owners_watch_only_their_own_devices(request, chromium_browser):
    with served(create_app) as server, pages_for(request, chromium_browser) as pages:
        greenhouse = server.call(lambda: register_device(server.db, "alice", "greenhouse"))
        cellar = server.call(lambda: register_device(server.db, "alice", "cellar"))
        garage = server.call(lambda: register_device(server.db, "bob", "garage"))

        def reading(device, value, sensor="temperature", unit="C"):
            # What a device writes (its own deviceId: the guard sets it from the device's key).
            data = {"deviceId": device["id"], "sensor": sensor, "value": value, "unit": unit}
            return server.call(lambda: server.db.resources.sensor_readings.insert(data))

        reading(greenhouse, 21.5)
        alice = pages.new(f"{server.http_url}/")
        bob = pages.new(f"{server.http_url}/", viewport=PHONE)
        sign_in(alice, "alice")
        sign_in(bob, "bob")

        # Each sees their own devices, never the other's; history is there from the start.
        expect(alice.locator(".device h3")).to_have_text(["cellar", "greenhouse"])
        expect(bob.locator(".device h3")).to_have_text(["garage"])
        alice_greenhouse = alice.locator(f".device[data-device-id='{greenhouse['id']}']")
        expect(alice_greenhouse.locator(".sensor[data-sensor=temperature] .value")).to_have_text("21.5°C")
        expect(alice.locator(f".device[data-device-id='{cellar['id']}'] .waiting")).to_be_visible()

        # Readings arrive live on the owner's page only.
        for value in (22.0, 23.5):
            reading(greenhouse, value)
        reading(greenhouse, 61, sensor="humidity", unit="%")
        reading(garage, 9.5)
        expect(alice_greenhouse.locator(".sensor[data-sensor=temperature] .value")).to_have_text("23.5°C")
        expect(alice_greenhouse.locator(".sensor[data-sensor=temperature] .range")).to_contain_text("min 21.5 · max 23.5")
        expect(alice_greenhouse.locator(".sensor[data-sensor=humidity] .value")).to_have_text("61%")
        expect(alice_greenhouse.locator(".state")).to_have_text("live")
        expect(bob.locator(".device .sensor .value")).to_have_text(["9.5°C"])
        expect(alice.locator(".device .sensor")).to_have_count(2)  # the garage's reading is not here
        assert "9.5" not in alice.locator("#devices").inner_text()
        shoot(alice, "iot-desktop")
        shoot(bob, "iot-phone")
        assert horizontal_overflow(bob) == 0
        assert header_problems(bob) == []  # as on every page: who is signed in, then Sign out at the right
        assert cut_placeholders(bob) == [] and cut_placeholders(alice) == []
        assert pages.errors() == []

        # Someone without devices gets an explanation, not an empty page.
        carol = pages.new(f"{server.http_url}/", viewport=PHONE)
        sign_in(carol, "carol")
        expect(carol.locator("#no-devices")).to_be_visible()
