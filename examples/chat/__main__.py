"""``python -m examples.chat [--port 3001] [--db memory://] [--host 127.0.0.1]``"""

from __future__ import annotations

import asyncio

from examples.chat.app import create_app, ensure_lobby
from examples.common import parse_options, run_forever, token_hint


async def main() -> None:
    options = parse_options("chat", default_db="memory://chat")
    db, plugin, jobs = await create_app(options)
    await ensure_lobby(db)
    print(f"Chat server running on {plugin.url} ({token_hint()})")
    print(f"Open the chat page: {plugin.http_url}/", flush=True)
    await run_forever(db, jobs)


if __name__ == "__main__":
    asyncio.run(main())
