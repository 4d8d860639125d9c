"""The real Redis and NATS servers the broker tests run against start, answer and restart."""

from __future__ import annotations

import nats
import redis.asyncio as aioredis


async def test_redis_answers(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()


async def test_nats_has_jetstream(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().account_info()
        assert info.streams >= 0
    finally:
        await nc.close()
