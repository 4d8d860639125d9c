"""The gaming leaderboard example end to end: anyone watches, only the game server writes,
players see only their own matches.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest
import pytest_asyncio
from example_process import running_example
from ws_helpers import connect

from examples.common import Options, make_token
from examples.leaderboard.app import create_app, play_demo_match, update_leaderboard
from s3db_ws_plugin.client import Client

SECRET = "leaderboard-test-secret-with-enough-bytes"
EVENT_TIMEOUT = 5.0


@pytest_asyncio.fixture
async def app():
    options = Options(port=0, host="127.0.0.1", db=f"memory://lb-{uuid.uuid4().hex}", jwt_secret=SECRET)
    db, plugin, _jobs = await create_app(options)
    try:
        yield db, plugin
    finally:
        await db.disconnect()


def player(plugin, name):
    return connect(plugin.url, token=make_token(SECRET, name))


def game_server(plugin):
    return connect(plugin.url, token=make_token(SECRET, "gs-1", role="game-server"))


def anonymous(plugin):
    return connect(plugin.url)


async def ok(client, type, **fields):
    reply = await client.call(type, **fields)
    assert reply["type"] != "error", reply
    return reply


async def refused(client, type, **fields):
    reply = await client.call(type, **fields)
    assert (reply["type"], reply.get("code")) == ("error", "FORBIDDEN"), reply
    return reply


def board(frames):
    return [(f["event"], f["data"]["userId"], f["data"]["highScore"], f["data"]["gamesPlayed"]) for f in frames]


async def test_anyone_watches_the_leaderboard_live_as_matches_end(app):
    db, plugin = app
    async with Client(plugin.url) as watcher, game_server(plugin) as gs, anonymous(plugin) as raw_watcher:
        assert watcher.user is None  # no account needed
        live = await watcher.subscribe("leaderboard")
        await ok(raw_watcher, "subscribe", resource="leaderboard")

        match = (await ok(gs, "insert", resource="matches", data={"players": ["ada", "bob"], "status": "playing"}))["data"]
        await ok(gs, "update", resource="matches", id=match["id"], data={"status": "finished", "scores": {"ada": 120, "bob": 80}})
        second = (await ok(gs, "insert", resource="matches", data={"players": ["ada"]}))["data"]
        await ok(gs, "update", resource="matches", id=second["id"], data={"status": "finished", "scores": {"ada": 90}})
        # Finishing a finished match again does not count twice.
        await ok(gs, "update", resource="matches", id=second["id"], data={"scores": {"ada": 95}})

        expected = [
            ("insert", "ada", 120, 1),
            ("insert", "bob", 80, 1),
            ("update", "ada", 120, 2),  # a lower score keeps the high score; the game still counts
        ]
        events = [await live.next(EVENT_TIMEOUT) for _ in expected]
        assert [(e.event, e.data["userId"], e.data["highScore"], e.data["gamesPlayed"]) for e in events] == expected
        assert board(await raw_watcher.sync()) == expected  # only leaderboard events, no matches

        listed = await watcher.list("leaderboard")
        assert sorted((e["userId"], e["highScore"]) for e in listed.items) == [("ada", 120), ("bob", 80)]
        assert (await watcher.get("leaderboard", listed.items[0]["id"]))["userId"] in ("ada", "bob")


async def test_only_the_game_server_writes(app):
    db, plugin = app
    entry = await update_leaderboard(db, "ada", 50)
    async with anonymous(plugin) as anon, player(plugin, "ada") as ada, game_server(plugin) as gs:
        for client in (anon, ada):
            await refused(client, "insert", resource="leaderboard", data={"userId": "ada", "highScore": 10**6})
            await refused(client, "update", resource="leaderboard", id=entry["id"], data={"highScore": 10**6})
            await refused(client, "delete", resource="leaderboard", id=entry["id"])
            await refused(client, "insert", resource="matches", data={"players": ["ada"]})
        # The game server writes scores over the socket too.
        written = await ok(gs, "update", resource="leaderboard", id=entry["id"], data={"highScore": 70})
        assert written["data"]["highScore"] == 70
        created = await ok(gs, "insert", resource="leaderboard", data={"userId": "bob", "highScore": 5, "gamesPlayed": 1})
        assert created["data"]["userId"] == "bob"
    assert (await db.resources.leaderboard.get(entry["id"]))["highScore"] == 70


async def test_players_only_see_their_own_matches(app):
    db, plugin = app
    async with (
        game_server(plugin) as gs,
        player(plugin, "ada") as ada,
        player(plugin, "cy") as cy,
        anonymous(plugin) as anon,
    ):
        # No matchId: the seed's `{'players[]': user.id}`, which a client cannot widen.
        sub = await ok(ada, "subscribe", resource="matches")
        assert sub["filter"] == {"players[]": "ada"}
        widened = await ok(cy, "subscribe", resource="matches", filter={"players[]": "ada"})
        assert widened["filter"] == {"players[]": "cy"}
        # Anonymous users get a clear refusal, and their connection keeps working.
        refusal = await refused(anon, "subscribe", resource="matches")
        assert "sign in" in refusal["message"]
        await refused(anon, "list", resource="matches")
        assert (await anon.call("ping"))["type"] == "pong"

        match = (await ok(gs, "insert", resource="matches", data={"players": ["ada", "bob"]}))["data"]
        # One match: players in it may follow it by id; others may not.
        one = await ok(ada, "subscribe", resource="matches", filter={"id": match["id"]})
        assert one["filter"] == {"id": match["id"]}
        await refused(cy, "subscribe", resource="matches", filter={"id": match["id"]})
        await refused(cy, "subscribe", resource="matches", filter={"id": "no-such-match"})
        # The seed's own form, {matchId}, works too, for players only: it means the match's id.
        seed_form = await ok(ada, "subscribe", resource="matches", filter={"matchId": match["id"]})
        assert seed_form["filter"] == {"id": match["id"]}
        await refused(cy, "subscribe", resource="matches", filter={"matchId": match["id"]})
        await refused(cy, "subscribe", resource="matches", filter={"matchId": {"$ne": "x"}})
        other = (await ok(gs, "insert", resource="matches", data={"players": ["cy"]}))["data"]
        # Naming two different matches at once is refused, not silently narrowed.
        await refused(ada, "subscribe", resource="matches", filter={"matchId": match["id"], "id": other["id"]})

        await ok(gs, "update", resource="matches", id=match["id"], data={"status": "playing"})
        # Ada gets each change once, although three of her subscriptions match it.
        assert [(f["event"], f["data"]["status"]) for f in await ada.sync()] == [("insert", "waiting"), ("update", "playing")]
        await ok(gs, "update", resource="matches", id=other["id"], data={"status": "playing"})
        assert await ada.sync() == []
        assert [f["data"]["id"] for f in await cy.sync()] == [other["id"], other["id"]]
        assert await anon.sync() == []

        await ok(ada, "get", resource="matches", id=match["id"])
        await refused(cy, "get", resource="matches", id=match["id"])
        await refused(anon, "get", resource="matches", id=match["id"])
        assert [m["id"] for m in (await ok(ada, "list", resource="matches"))["data"]] == [match["id"]]
        widened = await ok(cy, "list", resource="matches", filter={"players[]": "ada"})
        assert [m["id"] for m in widened["data"]] == [other["id"]]  # cy's own, not ada's
        # The game server follows every match.
        assert (await ok(gs, "subscribe", resource="matches"))["filter"] == {}


@pytest.mark.parametrize(("scores", "expected"), [
    ([100], (100, 1)),
    ([100, 150], (150, 2)),
    ([100, 40, 100], (100, 3)),
])
async def test_update_leaderboard(app, scores, expected):
    db, _plugin = app
    for score in scores:
        entry = await update_leaderboard(db, "ada", score)
    assert (entry["highScore"], entry["gamesPlayed"]) == expected
    assert len(await db.resources.leaderboard.query({"userId": "ada"})) == 1


async def test_matches_ending_together_both_count(app):
    db, plugin = app
    async with game_server(plugin) as gs1, game_server(plugin) as gs2:
        first = (await ok(gs1, "insert", resource="matches", data={"players": ["ada", "bob"]}))["data"]
        second = (await ok(gs2, "insert", resource="matches", data={"players": ["ada", "cy"]}))["data"]
        await asyncio.gather(
            ok(gs1, "update", resource="matches", id=first["id"], data={"status": "finished", "scores": {"ada": 10}}),
            ok(gs2, "update", resource="matches", id=second["id"], data={"status": "finished", "scores": {"ada": 30}}),
        )
    entries = await db.resources.leaderboard.query({"userId": "ada"})
    assert [(e["highScore"], e["gamesPlayed"]) for e in entries] == [(30, 2)]


async def test_the_demo_game_server_fills_the_leaderboard(app):
    db, _plugin = app
    match = await play_demo_match(db, random.Random(7))
    assert match["status"] == "finished"
    entries = {e["userId"]: e for e in await db.resources.leaderboard.query()}
    assert {p: entries[p]["highScore"] for p in match["players"]} == match["scores"]


async def test_python_m_examples_leaderboard_runs():
    async with running_example("leaderboard", SECRET) as (url, _lines):
        async with Client(url) as watcher, Client(url, token=make_token(SECRET, "gs", role="game-server")) as gs:
            live = await watcher.subscribe("leaderboard")
            await gs.insert("leaderboard", {"userId": "ada", "highScore": 10, "gamesPlayed": 1})
            assert (await live.next(EVENT_TIMEOUT)).data["userId"] == "ada"
