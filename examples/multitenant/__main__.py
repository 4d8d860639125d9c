"""``python -m examples.multitenant [--port 3001] [--db memory://multitenant] [--host 127.0.0.1]``"""

from __future__ import annotations

import asyncio

from examples.common import parse_options, print_dev_tokens, run_forever, token_hint
from examples.multitenant.app import create_app


async def main() -> None:
    options = parse_options("multitenant", default_db="memory://multitenant")
    db, plugin, jobs = await create_app(options)
    print(f"Multi-tenant server running on {plugin.url} ({token_hint('JWT with a tenantId claim')})", flush=True)
    print(f"Open the page: {plugin.http_url}/", flush=True)
    print_dev_tokens(options, plugin.url, {
        "ada": {"tenantId": "acme", "role": "admin"},
        "bert": {"tenantId": "acme"},
        "cleo": {"tenantId": "globex", "role": "admin"},
    })
    await run_forever(db, jobs)


if __name__ == "__main__":
    asyncio.run(main())
