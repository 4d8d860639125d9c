"""``python -m examples.notifications [--port 3001] [--db memory://notifications] [--host 127.0.0.1]``"""

from __future__ import annotations

import asyncio

from examples.common import every, parse_options, print_dev_tokens, run_forever, token_hint
from examples.notifications.app import SEED_USAGE, create_app, send_seed_notification

DEMO_EVERY = 10.0  # seconds between the demo's notifications


async def main() -> None:
    options = parse_options("notifications", default_db="memory://notifications")
    db, plugin, jobs = await create_app(options)
    user_id = SEED_USAGE[0]
    print(f"Notification server running on {plugin.url} ({token_hint()})", flush=True)
    print(f"Open the page: {plugin.http_url}/", flush=True)
    print(f"Demo: {user_id!r} gets the seed's notification every {DEMO_EVERY:g} s", flush=True)
    print_dev_tokens(options, plugin.url, {user_id: {"name": "Demo user"}, "user-456": {"name": "Someone else"}})

    async def demo() -> None:
        await send_seed_notification(db)

    await run_forever(db, [*jobs, every(DEMO_EVERY, demo)])


if __name__ == "__main__":
    asyncio.run(main())
