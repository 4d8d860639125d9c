"""Rate limiters for WebSocket frames, found by name in the ``s3db.rate_limiters`` group.

``MemoryRateLimiter`` config (snake_case or the seed's camelCase):

* ``max_requests`` / ``maxRequests`` - hits allowed per window, default 1000;
* ``window_ms`` / ``windowMs`` - window length in milliseconds, default 60000;
* ``strategy`` - ``"sliding-window"`` (default) or ``"token-bucket"``.

Other keys (``enabled``, ``key``, ...) belong to the plugin and are ignored here.

``RedisRateLimiter`` (``"limiter": "redis"``) takes the same keys plus ``url``
(``redis://host:port/db``, required) and ``prefix`` (default ``s3db:rl``): the same two
strategies, kept in Redis so a limit holds across every server process that shares it. Each hit
is one Lua script (atomic, timed by Redis's clock, so processes on machines with different
clocks agree); a key's state expires after a window of idleness. While Redis is unreachable the
limiter lets frames through (logged) rather than refusing every client.

The sliding window is an exact sliding log: a hit is allowed when fewer than ``max_requests``
hits were allowed in the last ``window_ms``; it keeps at most ``max_requests`` timestamps per
active key. The token bucket holds ``max_requests`` tokens and refills ``max_requests`` per
window. Keys idle for a whole window are evicted (their state then equals a fresh key's), so
memory follows the number of recently active keys. Each hit costs O(1) amortized.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from s3db_core.log import get_logger
from s3db_core.options import positive_float
from s3db_core.plugins import load_entry_point

if TYPE_CHECKING:
    from .connection import Connection

log = get_logger("s3db.rate_limit")

RATE_LIMIT_KEYS = ("connection", "user", "ip")

ENTRY_POINT_GROUP = "s3db.rate_limiters"
STRATEGIES = ("sliding-window", "token-bucket")


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Outcome of one hit: ``retry_after_ms`` is 0 when allowed, else > 0."""

    allowed: bool
    retry_after_ms: int
    remaining: int


@runtime_checkable
class RateLimiter(Protocol):
    """Counts hits per key."""

    async def hit(self, key: str) -> RateDecision:
        """Record one hit for ``key`` (only if allowed) and say whether it may proceed."""
        ...

    # A limiter may also have ``async def close()`` (or a sync one): the plugin calls it when
    # it stops, so a limiter holding connections (redis) releases them.


def _positive(config: Mapping[str, Any], snake: str, camel: str, default: float) -> float:
    return positive_float(f"rate limit {snake!r}", config.get(snake, config.get(camel, default)))


class _Window:
    """Sliding-log state: times of the allowed hits still inside the window."""

    __slots__ = ("last", "log")

    def __init__(self, now: float) -> None:
        self.last = now
        self.log: deque[float] = deque()


class _Bucket:
    """Token-bucket state: tokens left at the time of the last hit."""

    __slots__ = ("last", "tokens")

    def __init__(self, now: float, tokens: float) -> None:
        self.last = now
        self.tokens = tokens


class MemoryRateLimiter:
    """In-process rate limiter; ``clock`` returns seconds (default ``time.monotonic``)."""

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config = config or {}
        self.max_requests = int(_positive(config, "max_requests", "maxRequests", 1000))
        self.window_ms = _positive(config, "window_ms", "windowMs", 60000)
        self.window = self.window_ms / 1000.0
        self.strategy = config.get("strategy", "sliding-window")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown rate limit strategy {self.strategy!r}; use {STRATEGIES}")
        self._clock = clock
        # Ordered by last hit (allowed or refused): idle keys sit at the front.
        self._state: OrderedDict[str, _Window | _Bucket] = OrderedDict()

    def __len__(self) -> int:
        """Number of keys currently tracked."""
        return len(self._state)

    async def hit(self, key: str) -> RateDecision:
        """Record one hit for ``key`` and decide whether it may proceed."""
        now = self._clock()
        while self._state:  # evict keys idle for a window: their state equals a fresh one
            oldest = next(iter(self._state.values()))
            if now - oldest.last < self.window:
                break
            self._state.popitem(last=False)
        state = self._state.get(key)
        if state is None:
            state = self._state[key] = self._new_state(now)
        else:
            self._state.move_to_end(key)
        if isinstance(state, _Bucket):
            decision = self._hit_bucket(state, now)
        else:
            decision = self._hit_window(state, now)
        state.last = now
        return decision

    def _new_state(self, now: float) -> _Window | _Bucket:
        if self.strategy == "token-bucket":
            return _Bucket(now, float(self.max_requests))
        return _Window(now)

    def _hit_window(self, state: _Window, now: float) -> RateDecision:
        log, horizon = state.log, now - self.window
        while log and log[0] <= horizon:
            log.popleft()
        if len(log) < self.max_requests:
            log.append(now)
            return RateDecision(True, 0, self.max_requests - len(log))
        return RateDecision(False, self._retry_ms(log[0] - horizon), 0)

    def _hit_bucket(self, state: _Bucket, now: float) -> RateDecision:
        rate = self.max_requests / self.window  # tokens per second
        state.tokens = min(self.max_requests, state.tokens + (now - state.last) * rate)
        if state.tokens >= 1:
            state.tokens -= 1
            return RateDecision(True, 0, int(state.tokens))
        return RateDecision(False, self._retry_ms((1 - state.tokens) / rate), 0)

    def _retry_ms(self, wait: float) -> int:
        """Seconds to wait as whole milliseconds in ``[1, window_ms]``."""
        return max(1, min(math.ceil(wait * 1000), math.ceil(self.window_ms)))


# KEYS: the key's sorted set; ARGV: window (µs), max, a unique member suffix.
# Returns {allowed, retry_after_ms, remaining}.
_SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window, max = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < max then
  redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  return {1, 0, max - count - 1}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, math.ceil((tonumber(oldest[2]) + window - now) / 1000), 0}
"""

# KEYS: the key's hash {tokens, last}; ARGV: window (µs), max.
_TOKEN_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window, max = tonumber(ARGV[1]), tonumber(ARGV[2])
local rate = max / window
local state = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(state[1]) or max
local last = tonumber(state[2]) or now
tokens = math.min(max, tokens + math.max(0, now - last) * rate)
local allowed, retry = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = math.ceil((1 - tokens) / rate / 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
return {allowed, retry, math.floor(tokens)}
"""


class RedisRateLimiter:
    """A rate limiter shared by every process on one Redis (same strategies as the memory one)."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        import redis.asyncio as aioredis  # the `redis` extra; only this limiter needs it

        config = config or {}
        url = config.get("url")
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("the redis rate limiter needs 'url': 'redis://host:port/db'")
        self.max_requests = int(_positive(config, "max_requests", "maxRequests", 1000))
        self.window_ms = _positive(config, "window_ms", "windowMs", 60000)
        self.strategy = config.get("strategy", "sliding-window")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown rate limit strategy {self.strategy!r}; use {STRATEGIES}")
        prefix = config.get("prefix", "s3db:rl")
        if not isinstance(prefix, str) or not 0 < len(prefix) <= 64:
            raise ValueError("rate limit 'prefix' must be a string of 1-64 characters")
        self.timeout = float(_positive(config, "timeout", "timeout", 0.5))
        self._prefix = f"{prefix}:{self.strategy}:"
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
        )
        script = _TOKEN_BUCKET if self.strategy == "token-bucket" else _SLIDING_WINDOW
        self._script = self._client.register_script(script)
        self._window_us = int(self.window_ms * 1000)
        self._member = secrets.token_hex(4)  # this instance's suffix for sliding-log members
        self._hits = 0

    async def hit(self, key: str) -> RateDecision:
        """Record one hit for ``key`` in Redis and decide whether it may proceed."""
        self._hits += 1
        args: list[Any] = [self._window_us, self.max_requests]
        if self.strategy == "sliding-window":
            args.append(f"{self._member}:{self._hits}")
        try:
            async with asyncio.timeout(self.timeout):
                allowed, retry, remaining = await self._script(keys=[self._prefix + key], args=args)
        except Exception as exc:
            log.warning("rate_limiter_unreachable", error=repr(exc))
            return RateDecision(True, 0, 0)  # fail open: Redis down must not lock everyone out
        if allowed:
            return RateDecision(True, 0, int(remaining))
        return RateDecision(False, max(1, min(int(retry), math.ceil(self.window_ms))), 0)

    async def close(self) -> None:
        await self._client.aclose()


def load_rate_limiter(name: str, config: Mapping[str, Any] | None = None) -> RateLimiter:
    """Instantiate the limiter registered as ``name`` in ``s3db.rate_limiters``."""
    limiter: RateLimiter = load_entry_point(ENTRY_POINT_GROUP, name, kind="rate limiter")(
        dict(config or {})
    )
    return limiter


class RateLimit:
    """The frame rate limiter and what it is keyed by.

    ``key`` is ``"user"`` (the default: an authenticated connection counts against its user,
    any other against its IP address, so neither reconnecting nor opening parallel sockets
    resets the budget), ``"ip"``, ``"connection"``, or a list of them (``["user", "ip"]``): a
    frame must then be allowed under every key.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        key = config.get("key", "user")
        keys = [key] if isinstance(key, str) else key
        if (
            not isinstance(keys, list | tuple)
            or not keys
            or not all(isinstance(k, str) and k in RATE_LIMIT_KEYS for k in keys)
        ):
            raise ValueError(f"rate_limit 'key' must be one of {RATE_LIMIT_KEYS} or a list of them")
        self.keys: tuple[str, ...] = tuple(dict.fromkeys(keys))
        name = config.get("limiter", "memory")
        options = {k: v for k, v in config.items() if k not in ("enabled", "key", "limiter")}
        self.limiter = load_rate_limiter(name, options)

    def keys_for(self, conn: Connection) -> list[str]:
        keys = []
        for kind in self.keys:
            if kind == "connection":
                keys.append(f"conn:{conn.client_id}")
            elif kind == "user" and conn.user is not None:
                keys.append(f"user:{conn.user.id}")
            else:  # "ip", and "user" before (or without) authentication
                keys.append(f"ip:{conn.remote}")
        return list(dict.fromkeys(keys))

    async def hit(self, conn: Connection) -> RateDecision:
        """Count one frame of ``conn``; refused when any of its keys is over the limit."""
        decision = None
        for key in self.keys_for(conn):
            decision = await self.limiter.hit(key)
            if not decision.allowed:
                return decision
        assert decision is not None
        return decision
