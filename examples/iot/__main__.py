"""``python -m examples.iot [--port 3001] [--db memory://iot] [--host 127.0.0.1]``

On a store without devices, the demo registers one for ``alice`` and runs it: it sends a
temperature reading over the socket every 5 seconds, signed in with its API key.
"""

from __future__ import annotations

import asyncio
from typing import Any

from examples.common import parse_options, print_dev_tokens, run_forever, token_hint
from examples.iot.app import create_app, define_resources, register_device, simulate_device
from s3db_core import Database

DEMO_OWNER = "alice"


async def provision_demo_device(url: str, broker: str = "local") -> dict[str, Any] | None:
    """Register a demo device when the store has none (before the keys are loaded)."""
    db = Database(url, broker=broker)
    await db.connect()
    try:
        await define_resources(db)
        if await db.resources.devices.count():
            return None
        return await register_device(db, DEMO_OWNER, "demo thermometer")
    finally:
        await db.disconnect()


async def main() -> None:
    options = parse_options("iot", default_db="memory://iot")
    device = await provision_demo_device(options.db, options.broker)
    db, plugin, jobs = await create_app(options)
    print(f"IoT server running on {plugin.url} (devices: an x-api-key header; users: {token_hint()})", flush=True)
    print(f"Open the page: {plugin.http_url}/", flush=True)
    if device is not None:
        print(f"Demo device {device['id']!r} of {DEMO_OWNER!r} sends a reading every 5 s; "
              f"subscribe to sensor_readings with filter {{'deviceId': {device['id']!r}}}", flush=True)

        async def demo_device() -> None:
            await simulate_device(plugin.url, device["apiKey"])

        jobs = [*jobs, demo_device]
    print_dev_tokens(options, plugin.url, {DEMO_OWNER: {"name": DEMO_OWNER.title()}})
    await run_forever(db, jobs)


if __name__ == "__main__":
    asyncio.run(main())
