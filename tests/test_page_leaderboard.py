"""The leaderboard page at ``/`` in real Chromium: a live ranking for anyone, matches for players."""

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

from examples.leaderboard.app import create_app, update_leaderboard


@pytest.fixture(scope="module")
def chromium_browser():
    with chromium() as browser:
        yield browser


def test_anyone_watches_the_ranking_reorder_and_players_follow_their_matches(request, chromium_browser):
    with served(create_app) as server, pages_for(request, chromium_browser) as pages:
        db = server.db

        def score(player: str, points: int) -> None:
            server.call(lambda: update_leaderboard(db, player, points))

        def game_server(coro_fn):  # what the game server writes (it signs in with role game-server)
            return server.call(coro_fn)

        for player, points in (("ada", 300), ("bob", 500), ("cy", 100)):
            score(player, points)

        # An anonymous viewer sees the ranking at once, no sign-in needed.
        viewer = pages.new(f"{server.http_url}/")
        expect(viewer.locator("#connection")).to_have_text("connected")
        expect(viewer.locator("#whoami")).to_have_text("watching anonymously")
        expect(viewer.locator("#ranking li .player .name")).to_have_text(["bob", "ada", "cy"])

        # Ada signs in as a player on her phone.
        ada = pages.new(f"{server.http_url}/", viewport=PHONE)
        expect(ada.locator(".dev-banner")).to_contain_text("DEV ONLY")
        ada.fill("#login-name", "ada")
        ada.click("#login button[type=submit]")
        expect(ada.locator("#whoami")).to_have_text("playing as ada")
        expect(ada.locator("#connection")).to_have_text("connected")
        expect(ada.locator("#ranking li.me .player .name")).to_have_text("ada")

        # A new high score reorders the ranking live, for both.
        score("cy", 900)
        for page in (viewer, ada):
            expect(page.locator("#ranking li .player .name")).to_have_text(["cy", "bob", "ada"])
            expect(page.locator("#ranking li[data-user-id=cy] .score")).to_have_text("900")

        # The game server starts a match with Ada: she follows it; the viewer sees no matches.
        match = game_server(lambda: db.resources.matches.insert({"players": ["ada", "bob"], "status": "playing"}))
        game_server(lambda: db.resources.matches.insert({"players": ["bob", "cy"], "status": "playing"}))
        row = ada.locator(f".match[data-match-id='{match['id']}']")
        expect(row.locator(".status")).to_have_text("playing")
        expect(row.locator(".players")).to_have_text("ada vs bob")
        expect(viewer.locator("#app")).to_be_hidden()
        expect(viewer.locator("#login")).to_be_visible()

        # It ends: Ada sees the result, and her new high score moves her to the top everywhere.
        game_server(lambda: db.resources.matches.update(match["id"], {"status": "finished", "scores": {"ada": 1200, "bob": 50}}))
        expect(row.locator(".players")).to_have_text("ada 1200 vs bob 50")
        for page in (viewer, ada):
            expect(page.locator("#ranking li .player .name")).to_have_text(["ada", "cy", "bob"])
            expect(page.locator("#ranking li[data-user-id=ada] .games")).to_have_text("2")
        expect(ada.locator(".match")).to_have_count(1)  # never the bob-vs-cy match
        shoot(viewer, "leaderboard-desktop")
        shoot(ada, "leaderboard-phone")
        assert horizontal_overflow(ada) == 0
        assert header_problems(ada) == []  # as on every page: who is signed in, then Sign out at the right
        assert cut_placeholders(ada) == [] and cut_placeholders(viewer) == []
        assert pages.errors() == []
