"""The ``redis`` rate limiter on a real Redis: one limit shared by every process that uses it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from ws_helpers import connect, serve

from s3db_ws_plugin.rate_limiters import RedisRateLimiter, load_rate_limiter

STRATEGIES = ["sliding-window", "token-bucket"]


@pytest.fixture
def prefix() -> str:
    return f"rl-{uuid.uuid4().hex[:10]}"


def pair(redis_url: str, prefix: str, **config) -> tuple[RedisRateLimiter, RedisRateLimiter]:
    """Two limiters on one Redis, as two server processes would have."""
    options = {"url": redis_url, "prefix": prefix, **config}
    first = load_rate_limiter("redis", options)
    second = load_rate_limiter("redis", options)
    assert isinstance(first, RedisRateLimiter) and isinstance(second, RedisRateLimiter)
    return first, second


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_limit_holds_across_two_limiters(
    redis_url: str, prefix: str, strategy: str
) -> None:
    one, two = pair(redis_url, prefix, maxRequests=5, windowMs=60_000, strategy=strategy)
    try:
        decisions = [await (one if i % 2 else two).hit("user:ada") for i in range(5)]
        assert all(d.allowed for d in decisions)
        assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
        for limiter in (one, two):
            refused = await limiter.hit("user:ada")
            assert not refused.allowed
            assert 1 <= refused.retry_after_ms <= 60_000
        assert (await two.hit("user:bob")).allowed  # keys are independent
    finally:
        await one.close()
        await two.close()


async def test_token_bucket_refuses_until_a_token_refills(redis_url: str, prefix: str) -> None:
    one, two = pair(redis_url, prefix, maxRequests=4, windowMs=60_000, strategy="token-bucket")
    try:
        for _ in range(4):
            assert (await one.hit("k")).allowed
        refused = await two.hit("k")
        assert not refused.allowed
        assert 14_000 <= refused.retry_after_ms <= 15_000  # one token per 15 s
    finally:
        await one.close()
        await two.close()


async def test_sliding_window_reopens_when_the_oldest_hit_leaves(
    redis_url: str, prefix: str
) -> None:
    one, two = pair(redis_url, prefix, maxRequests=2, windowMs=300)
    try:
        assert (await one.hit("k")).allowed
        assert (await two.hit("k")).allowed
        refused = await one.hit("k")
        assert not refused.allowed and 1 <= refused.retry_after_ms <= 300
        await asyncio.sleep(refused.retry_after_ms / 1000 + 0.05)  # the window under test
        assert (await two.hit("k")).allowed
    finally:
        await one.close()
        await two.close()


async def test_an_unreachable_redis_lets_frames_through() -> None:
    limiter = RedisRateLimiter({"url": "redis://127.0.0.1:1/0", "maxRequests": 1, "timeout": 0.2})
    try:
        assert (await limiter.hit("k")).allowed
        assert (await limiter.hit("k")).allowed
    finally:
        await limiter.close()


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"url": "http://x"},
        {"url": "redis://h", "strategy": "leaky"},
        {"url": "redis://h", "maxRequests": 0},
    ],
)
def test_bad_config_is_refused(config: dict) -> None:
    with pytest.raises(ValueError):
        RedisRateLimiter(config)


async def test_a_stopped_server_closes_its_redis_limiter(redis_url: str, prefix: str) -> None:
    rate = {"limiter": "redis", "url": redis_url, "prefix": prefix, "max_requests": 5}
    closed = asyncio.Event()
    async with serve(resources={}, rate_limit=rate) as (_, plugin):
        limiter = plugin.rate_limit.limiter
        real_close = limiter.close

        async def close() -> None:
            await real_close()
            closed.set()

        limiter.close = close
        async with connect(plugin.url) as client:
            assert (await client.call("ping"))["type"] == "pong"
    assert closed.is_set()


async def test_two_servers_share_one_limit_per_ip(redis_url: str, prefix: str) -> None:
    rate = {"enabled": True, "limiter": "redis", "url": redis_url, "prefix": prefix,
            "key": "ip", "maxRequests": 3, "windowMs": 60_000}  # fmt: skip
    async with (
        serve(resources={}, rate_limit=rate) as (_, first),
        serve(resources={}, rate_limit=rate) as (_, second),
        connect(first.url) as a,
        connect(second.url) as b,
    ):
        assert (await a.call("ping"))["type"] == "pong"
        assert (await b.call("ping"))["type"] == "pong"
        assert (await a.call("ping"))["type"] == "pong"
        refused = await b.call("ping")  # the fourth frame from this IP, on the other server
        assert refused["type"] == "error" and refused["code"] == "RATE_LIMITED"
        assert 1 <= refused["retryAfterMs"] <= 60_000
