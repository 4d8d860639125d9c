"""``python -m examples.dashboard [--port 3001] [--db memory://] [--host 127.0.0.1]``"""

from __future__ import annotations

import asyncio

from examples.common import parse_options, run_forever, token_hint
from examples.dashboard.app import create_app


async def main() -> None:
    options = parse_options("dashboard", default_db="memory://dashboard")
    db, plugin, jobs = await create_app(options)
    print(f"Dashboard server running on {plugin.url} ({token_hint()})")
    print(f"Open the dashboard page: {plugin.http_url}/", flush=True)
    await run_forever(db, jobs)


if __name__ == "__main__":
    asyncio.run(main())
