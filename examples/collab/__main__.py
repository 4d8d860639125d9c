"""``python -m examples.collab [--port 3001] [--db memory://collab] [--host 127.0.0.1]``"""

from __future__ import annotations

import asyncio

from examples.collab.app import create_app
from examples.common import parse_options, print_dev_tokens, run_forever, token_hint


async def main() -> None:
    options = parse_options("collab", default_db="memory://collab")
    db, plugin, jobs = await create_app(options)
    print(f"Collaborative editing server running on {plugin.url} ({token_hint()})", flush=True)
    print(f"Open the page: {plugin.http_url}/", flush=True)
    print_dev_tokens(options, plugin.url, {"alice": {"name": "Alice"}, "bob": {"name": "Bob"}})
    await run_forever(db, jobs)


if __name__ == "__main__":
    asyncio.run(main())
