"""Tests for s3db_ws_plugin.rate_limiters: sliding window, token bucket, loading by name."""

from __future__ import annotations

import pytest

from s3db_ws_plugin.rate_limiters import (
    MemoryRateLimiter,
    RateDecision,
    RateLimiter,
    load_rate_limiter,
)


class FakeClock:
    """A clock in seconds that only moves when told to (kept in whole ms: no float drift)."""

    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> float:
        return self.ms / 1000

    def advance(self, ms: int) -> None:
        self.ms += ms


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def limiter(clock: FakeClock, strategy: str, max_requests: int = 3, window_ms: int = 1000):
    config = {"max_requests": max_requests, "window_ms": window_ms, "strategy": strategy}
    return MemoryRateLimiter(config, clock=clock)


async def hits(rl: MemoryRateLimiter, key: str, n: int) -> list[RateDecision]:
    return [await rl.hit(key) for _ in range(n)]


@pytest.mark.parametrize("strategy", ["sliding-window", "token-bucket"])
async def test_allows_up_to_the_limit_then_refuses(clock, strategy) -> None:
    rl = limiter(clock, strategy)
    allowed = await hits(rl, "c1", 3)
    assert [d.allowed for d in allowed] == [True, True, True]
    assert [d.remaining for d in allowed] == [2, 1, 0]
    assert all(d.retry_after_ms == 0 for d in allowed)
    refused = await rl.hit("c1")
    assert not refused.allowed and refused.remaining == 0
    assert 0 < refused.retry_after_ms <= 1000


@pytest.mark.parametrize("strategy", ["sliding-window", "token-bucket"])
async def test_separate_keys_are_independent(clock, strategy) -> None:
    rl = limiter(clock, strategy)
    await hits(rl, "c1", 3)
    assert not (await rl.hit("c1")).allowed
    assert (await rl.hit("c2")).allowed


async def test_sliding_window_reopens_exactly_when_oldest_hit_leaves(clock) -> None:
    rl = limiter(clock, "sliding-window")
    await rl.hit("c")  # t=0
    clock.advance(400)
    await hits(rl, "c", 2)  # t=400
    clock.advance(200)  # t=600: the t=0 hit leaves the window at t=1000
    refused = await rl.hit("c")
    assert not refused.allowed and refused.retry_after_ms == 400
    clock.advance(399)
    assert not (await rl.hit("c")).allowed
    clock.advance(1)  # t=1000
    assert (await rl.hit("c")).allowed
    assert not (await rl.hit("c")).allowed  # the t=400 hits are still inside


async def test_sliding_window_refused_hits_do_not_count(clock) -> None:
    rl = limiter(clock, "sliding-window")
    await hits(rl, "c", 3)
    for _ in range(10):
        clock.advance(50)
        assert not (await rl.hit("c")).allowed
    clock.advance(500)  # t=1000: all three original hits expired
    assert [d.allowed for d in await hits(rl, "c", 4)] == [True, True, True, False]


async def test_sliding_window_never_exceeds_limit_in_any_window(clock) -> None:
    rl = limiter(clock, "sliding-window", max_requests=5, window_ms=100)
    allowed_at = []
    for _ in range(1000):
        clock.advance(7)
        if (await rl.hit("c")).allowed:
            allowed_at.append(clock.ms)
    for i, t in enumerate(allowed_at):
        in_window = [u for u in allowed_at[i:] if u - t < 100]
        assert len(in_window) <= 5
    assert len(allowed_at) >= 5 * (7000 // 100) * 0.9  # and it is not overly strict


async def test_token_bucket_refills_at_max_per_window(clock) -> None:
    rl = limiter(clock, "token-bucket", max_requests=4, window_ms=1000)  # 1 token / 250 ms
    await hits(rl, "c", 4)
    refused = await rl.hit("c")
    assert not refused.allowed and refused.retry_after_ms == 250
    clock.advance(100)
    assert (await rl.hit("c")).retry_after_ms == 150
    clock.advance(150)
    assert (await rl.hit("c")).allowed
    assert not (await rl.hit("c")).allowed
    clock.advance(1000)  # a full window refills the bucket (an idle key is also evicted)
    assert [d.allowed for d in await hits(rl, "c", 5)] == [True] * 4 + [False]


async def test_token_bucket_never_holds_more_than_capacity(clock) -> None:
    rl = limiter(clock, "token-bucket", max_requests=4, window_ms=1000)
    await rl.hit("c")  # 3 tokens left
    clock.advance(900)  # +3.6 tokens, capped at 4
    assert [d.allowed for d in await hits(rl, "c", 5)] == [True] * 4 + [False]


@pytest.mark.parametrize("strategy", ["sliding-window", "token-bucket"])
async def test_idle_keys_are_evicted(clock, strategy) -> None:
    rl = limiter(clock, strategy)
    for i in range(100):
        await rl.hit(f"conn-{i}")
    assert len(rl) == 100
    clock.advance(500)
    await rl.hit("conn-0")  # keeps conn-0 alive
    clock.advance(600)  # everyone else idle for 1100 ms > window
    await rl.hit("fresh")
    assert len(rl) == 2
    # an evicted key behaves like a new one
    assert [d.allowed for d in await hits(rl, "conn-5", 4)] == [True, True, True, False]


def test_accepts_seed_camel_case_config_and_defaults(clock) -> None:
    rl = MemoryRateLimiter({"enabled": True, "maxRequests": 1000, "windowMs": 60000})
    assert (rl.max_requests, rl.window_ms, rl.strategy) == (1000, 60000, "sliding-window")
    assert MemoryRateLimiter().max_requests > 0


@pytest.mark.parametrize(
    "config",
    [{"max_requests": 0}, {"window_ms": -5}, {"maxRequests": "10"}, {"strategy": "leaky"}],
)
def test_bad_config_rejected(config) -> None:
    with pytest.raises(ValueError):
        MemoryRateLimiter(config)


async def test_load_rate_limiter_by_entry_point_name() -> None:
    rl = load_rate_limiter("memory", {"maxRequests": 1, "windowMs": 1000})
    assert isinstance(rl, MemoryRateLimiter) and isinstance(rl, RateLimiter)
    assert (await rl.hit("k")).allowed and not (await rl.hit("k")).allowed
    with pytest.raises(ValueError, match="'nope'.*memory"):
        load_rate_limiter("nope", {})
