"""``python -m examples.leaderboard [--port 3001] [--db memory://leaderboard] [--host 127.0.0.1]``

The demo plays a match between two random players every 5 seconds, so an anonymous client
subscribed to ``leaderboard`` sees the scores change.
"""

from __future__ import annotations

import asyncio

from examples.common import every, parse_options, print_dev_tokens, run_forever, token_hint
from examples.leaderboard.app import DEMO_PLAYERS, GAME_SERVER, create_app, play_demo_match

DEMO_EVERY = 5.0


async def main() -> None:
    options = parse_options("leaderboard", default_db="memory://leaderboard")
    db, plugin, jobs = await create_app(options)
    print(f"Leaderboard server running on {plugin.url} (anyone may watch; players and the game server: {token_hint()})", flush=True)
    print(f"Open the page: {plugin.http_url}/", flush=True)
    print(f"Demo: a match every {DEMO_EVERY:g} s between two of {', '.join(DEMO_PLAYERS)}", flush=True)
    print_dev_tokens(options, plugin.url, {
        "game-server-1": {"role": GAME_SERVER},
        **{player: {"name": player.title()} for player in DEMO_PLAYERS[:2]},
    })

    async def demo_match() -> None:
        await play_demo_match(db)

    await run_forever(db, [*jobs, every(DEMO_EVERY, demo_match)])


if __name__ == "__main__":
    asyncio.run(main())
