"""The seed's gaming leaderboard: anyone watches the scores live, only the game server writes.

Authentication is optional: anonymous clients watch the leaderboard, players sign in with a JWT
to follow their own matches, and the game server signs in with a JWT whose role is
``game-server``. The guards are the seed's; where it leaves an operation open they close it the
way its comments intend (README.md lists each change): only the game server writes matches or
deletes leaderboard entries, and players read only the matches they play in. Matches, which the
seed does not define, have ``players``, ``status`` and ``scores`` (``{playerId: score}``).

When the game server marks a match ``finished``, ``MatchResults`` calls the seed's
``update_leaderboard`` for every player with their score.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from examples.common import Options, find_record, start_app
from s3db_core import Change, Database, ForbiddenError, hookimpl
from s3db_ws_plugin import WebSocketPlugin

log = structlog.get_logger("s3db.examples.leaderboard")

GAME_SERVER = "game-server"
DEMO_PLAYERS = ("ada", "bob", "cy", "dee")
Job = Callable[[], Awaitable[None]]


async def define_resources(db: Database) -> None:
    await db.create_resource(
        "leaderboard",
        {
            "userId": "string|required",
            "highScore": "number|required",
            "gamesPlayed": "number|integer|min:0|default:0",
        },
        timestamps=True,
        partitions={"byUser": {"fields": {"userId": "string"}}},
    )
    await db.create_resource(
        "matches",
        {
            "players": "array|items:string|required|min:1",
            "status": "string|enum:waiting,playing,finished|default:waiting",
            "scores": "json|default:{}",  # {playerId: score}
        },
        timestamps=True,
    )


def is_game_server(user: Any) -> bool:
    return user is not None and user.role == GAME_SERVER


def signed_in(user: Any) -> None:
    if user is None:
        raise ForbiddenError("sign in to follow your matches: anonymous users only watch the leaderboard")


def resources_config(db: Database) -> dict[str, Any]:
    """The plugin's ``resources`` option."""
    matches = db.resources.matches

    async def match_subscribe(user: Any, filter: dict[str, Any]) -> dict[str, Any] | bool:
        signed_in(user)
        if is_game_server(user):
            return True
        if "matchId" in filter:
            raise ForbiddenError("a match is named by its id: filter {'id': <match id>}")
        # Users can only subscribe to matches they're in (the seed's `filter.matchId`)
        if "id" in filter:
            match = await find_record(matches, filter["id"])
            if match is None or user.id not in match["players"]:
                return False
            return {"id": match["id"]}
        return {"players[]": user.id}

    def match_list(user: Any, ctx: Any) -> dict[str, Any] | bool:
        signed_in(user)
        if is_game_server(user):
            return True
        return {"players[]": user.id}

    def match_get(user: Any, ctx: Any) -> bool:
        signed_in(user)
        return is_game_server(user) or (ctx.record is not None and user.id in ctx.record["players"])

    def game_server_only(user: Any, arg: Any) -> bool:
        return is_game_server(user)

    return {
        "leaderboard": {
            "events": ["insert", "update"],
            "guard": {
                # Anyone can view
                "subscribe": lambda user, filter: True,
                "list": lambda user, ctx: True,
                # Only game server can update scores
                "create": game_server_only,
                "update": game_server_only,
                "delete": game_server_only,
            },
        },
        "matches": {
            "events": ["insert", "update"],
            "guard": {
                "subscribe": match_subscribe,
                "list": match_list,
                "get": match_get,
                "create": game_server_only,
                "update": game_server_only,
                "delete": game_server_only,
            },
        },
    }


async def update_leaderboard(db: Database, user_id: str, score: float) -> dict[str, Any]:
    """The seed's ``updateLeaderboard`` when a match ends: a new high score replaces the old one.

    One change on purpose: every game counts in ``gamesPlayed``, also when it did not beat the
    high score (the seed only counted games that did).
    """
    leaderboard = db.resources.leaderboard
    existing = await leaderboard.query({"userId": user_id})
    if existing:
        current = existing[0]
        patch: dict[str, Any] = {"gamesPlayed": current["gamesPlayed"] + 1}
        if score > current["highScore"]:
            patch["highScore"] = score
        return await leaderboard.update(current["id"], patch)
    return await leaderboard.insert({"userId": user_id, "highScore": score, "gamesPlayed": 1})


class MatchResults:
    """Update the leaderboard when a match ends (its ``status`` becomes ``finished``).

    Finished matches are counted one at a time, so two matches of the same player ending
    together both count (``update_leaderboard`` reads, then writes).
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = asyncio.Lock()

    @hookimpl
    async def s3db_change(self, change: Change) -> None:
        if change.resource != "matches" or change.event != "update":
            return
        match, before = change.record, change.previous or {}
        if match["status"] != "finished" or before.get("status") == "finished":
            return
        scores = match["scores"] if isinstance(match["scores"], dict) else {}
        async with self._lock:
            for player in match["players"]:
                try:
                    await update_leaderboard(self.db, player, scores.get(player, 0))
                except Exception:  # the match result is stored either way; never fail its writer
                    log.exception("could not update the leaderboard", match=match["id"], player=player)


async def play_demo_match(db: Database, rng: random.Random | None = None) -> dict[str, Any]:
    """The demo's game server: two random players play a match and it ends with random scores."""
    rng = rng or random.Random()
    players = rng.sample(DEMO_PLAYERS, 2)
    match = await db.resources.matches.insert({"players": players, "status": "playing"})
    scores = {player: rng.randrange(0, 1000, 10) for player in players}
    return await db.resources.matches.update(match["id"], {"status": "finished", "scores": scores})


async def create_app(options: Options) -> tuple[Database, WebSocketPlugin, list[Job]]:
    """Connect the database, define the resources and serve them on ``options.port``.

    Returns the database, the running plugin and the background jobs (none: the demo adds a
    simulated game server).
    """

    async def make_plugin(db: Database) -> WebSocketPlugin:
        return WebSocketPlugin(
            port=options.port,
            host=options.host,
            # Watching needs no account; players and the game server sign in with a JWT.
            auth={"required": False, "drivers": [{"driver": "jwt", "config": {"secret": options.jwt_secret}}]},
            resources=resources_config(db),
        )

    db, plugin = await start_app(
        options, define_resources, make_plugin, before=lambda db: [MatchResults(db)]
    )
    return db, plugin, []
