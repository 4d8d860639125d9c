"""What one client address, and one signed-in user, may hold at once: subscriptions, and the
bytes of their filters, summed over every socket.

A connection may hold ``max_subscriptions`` subscriptions and an address ``max_connections_per_ip``
sockets; without a bound on their sum one address could pin gigabytes (1,024 sockets x 100
subscriptions x ~66 KB for a 16 KB filter). ``Holdings`` keeps, per client address (always) and
per user (signed-in connections), how many subscriptions are held and how many bytes their
effective filters take (as JSON), and refuses a subscription that would take either past its
budget with ``FORBIDDEN`` (``details: {limit, max}``). The defaults keep one address (and one
user) at a few tens of megabytes at most.

Across processes: when the plugin's rate limiter is the shared Redis one, the same budgets hold
across every process on that Redis (``RedisHoldings``): each process records its own totals per
key in one Redis hash (one field per process, with a sequence number so a late write never
replaces a newer one), and a subscription is allowed when the sum over live processes stays
within the budget. A process refreshes its totals every ``REFRESH_SECONDS``; a process that died
stops counting after ``STALE_SECONDS``. While Redis is unreachable the local budgets still hold
(the shared check lets the subscription through and logs it, like the limiter).

The client address is ``Connection.remote``, the one place that says where a client is.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from s3db_core.log import get_logger

from .protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from .connection import Connection

log = get_logger("s3db.ws")

DEFAULT_MAX_SUBSCRIPTIONS_PER_IP = 2000
DEFAULT_MAX_FILTER_BYTES_PER_IP = 4 << 20
DEFAULT_MAX_SUBSCRIPTIONS_PER_USER = 2000
DEFAULT_MAX_FILTER_BYTES_PER_USER = 4 << 20
REFRESH_SECONDS = 20.0
STALE_SECONDS = 60.0


@dataclass(slots=True)
class Hold:
    """What one subscription holds: one subscription and ``size`` filter bytes under each of
    ``keys`` (its address, and its user's id when signed in)."""

    keys: tuple[str, ...]
    size: int


@dataclass(frozen=True, slots=True)
class Budget:
    """The caps of one kind of key (None: no cap)."""

    kind: str  # "ip" or "user"
    subscriptions: int | None
    filter_bytes: int | None


class Holdings:
    """Subscriptions and filter bytes held per client address and per user, against their
    budgets; ``reserve`` before a subscription is added, ``release`` when it is removed."""

    def __init__(
        self,
        *,
        max_subscriptions_per_ip: int | None = DEFAULT_MAX_SUBSCRIPTIONS_PER_IP,
        max_filter_bytes_per_ip: int | None = DEFAULT_MAX_FILTER_BYTES_PER_IP,
        max_subscriptions_per_user: int | None = DEFAULT_MAX_SUBSCRIPTIONS_PER_USER,
        max_filter_bytes_per_user: int | None = DEFAULT_MAX_FILTER_BYTES_PER_USER,
        shared: RedisHoldings | None = None,
    ) -> None:
        # Validated by Settings (max_subscriptions_per_ip, ...).
        self.budgets = {
            "ip": Budget("ip", max_subscriptions_per_ip, max_filter_bytes_per_ip),
            "user": Budget("user", max_subscriptions_per_user, max_filter_bytes_per_user),
        }
        self.shared = shared
        # key -> [subscriptions, filter bytes]; a key holding nothing is dropped.
        self._held: dict[str, list[int]] = {}

    def held(self, key: str) -> tuple[int, int]:
        """(subscriptions, filter bytes) held in this process under ``key`` (``ip:<address>``
        or ``user:<id>``)."""
        counts = self._held.get(key)
        return (counts[0], counts[1]) if counts else (0, 0)

    def _keys(self, conn: Connection) -> list[tuple[str, Budget]]:
        keys = [(f"ip:{conn.remote or ''}", self.budgets["ip"])]
        if conn.user is not None:
            keys.append((f"user:{conn.user.id}", self.budgets["user"]))
        return keys

    async def reserve(self, conn: Connection, size: int) -> Hold:
        """Count one more subscription of ``size`` filter bytes for ``conn``'s address and user,
        or raise ``FORBIDDEN`` (nothing counted) when that would pass a budget."""
        keys = self._keys(conn)
        for key, budget in keys:
            subs, held = self.held(key)
            _check(budget, subs + 1, held + size)
        for key, _ in keys:
            counts = self._held.setdefault(key, [0, 0])
            counts[0] += 1
            counts[1] += size
        hold = Hold(tuple(key for key, _ in keys), size)
        shared = self.shared
        if shared is not None:
            try:
                for key, budget in keys:
                    subs, held = self.held(key)
                    refused = await shared.claim(key, subs, held, budget)
                    if refused is not None:
                        raise _refusal(budget, refused, shared=True)
            except BaseException:  # refused, or cancelled: nothing stays counted
                self.release(hold)  # (and the totals already recorded go back down)
                raise
        return hold

    def release(self, hold: Hold, *, publish: bool = True) -> None:
        """Forget one subscription's ``hold`` (it was removed)."""
        for key in hold.keys:
            counts = self._held.get(key)
            if counts is None:
                continue
            counts[0] -= 1
            counts[1] -= hold.size
            if counts[0] <= 0:
                del self._held[key]
            if publish and self.shared is not None:
                self.shared.publish(key, *self.held(key))

    def totals(self) -> dict[str, tuple[int, int]]:
        """(subscriptions, filter bytes) under every key this process holds something under."""
        return {key: (counts[0], counts[1]) for key, counts in self._held.items()}

    async def start(self) -> None:
        if self.shared is not None:
            self.shared.start(self)

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()


def _check(budget: Budget, subscriptions: int, size: int) -> None:
    """Raise ``FORBIDDEN`` when ``subscriptions`` or ``size`` passes ``budget``."""
    if budget.subscriptions is not None and subscriptions > budget.subscriptions:
        raise _refusal(budget, "subscriptions")
    if budget.filter_bytes is not None and size > budget.filter_bytes:
        raise _refusal(budget, "filter_bytes")


def _refusal(budget: Budget, limit: str, *, shared: bool = False) -> ProtocolError:
    who = "your address" if budget.kind == "ip" else "your user"
    where = " across the servers" if shared else ""
    if limit == "subscriptions":
        maximum = budget.subscriptions
        message = (
            f"too many subscriptions held by {who}{where} (limit {maximum}); unsubscribe first"
        )
    else:
        maximum = budget.filter_bytes
        message = (
            f"the filters of the subscriptions held by {who}{where} would pass {maximum} "
            "bytes; unsubscribe first or use smaller filters"
        )
    return ProtocolError(
        ErrorCode.FORBIDDEN, message, {"limit": f"{limit}_per_{budget.kind}", "max": maximum}
    )


# KEYS[1]: the key's hash (a field per process: "seq subscriptions bytes time_ms").
# ARGV: process, seq, subscriptions, bytes, max subscriptions (-1: none), max bytes (-1: none),
# check ("1": refuse when over), stale after (ms). Returns 1 when written (or a newer state is
# recorded), 0 refused for subscriptions, 2 refused for bytes.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, seq = ARGV[1], tonumber(ARGV[2])
local subs, bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local stale = tonumber(ARGV[8])
local mine = redis.call('HGET', KEYS[1], me)
if mine then
  local recorded = tonumber(string.match(mine, '^(%d+)'))
  if recorded and recorded > seq then return 1 end
end
if ARGV[7] == '1' then
  local total_s, total_b = subs, bytes
  local fields = redis.call('HGETALL', KEYS[1])
  for i = 1, #fields, 2 do
    if fields[i] ~= me then
      local _, s, b, at = string.match(fields[i + 1], '^(%d+) (%d+) (%d+) (%d+)$')
      if at and now - tonumber(at) < stale then
        total_s = total_s + tonumber(s)
        total_b = total_b + tonumber(b)
      else
        redis.call('HDEL', KEYS[1], fields[i])
      end
    end
  end
  local max_s, max_b = tonumber(ARGV[5]), tonumber(ARGV[6])
  if max_s >= 0 and total_s > max_s then return 0 end
  if max_b >= 0 and total_b > max_b then return 2 end
end
if subs <= 0 then
  redis.call('HDEL', KEYS[1], me)
else
  redis.call('HSET', KEYS[1], me, seq .. ' ' .. subs .. ' ' .. bytes .. ' ' .. now)
end
redis.call('PEXPIRE', KEYS[1], stale)
return 1
"""


class RedisHoldings:
    """The per-process totals of ``Holdings`` kept in Redis, so budgets hold across processes."""

    def __init__(self, url: str, prefix: str = "s3db:rl", timeout: float = 0.5) -> None:
        self._url = url
        self._client: Any = None  # connected by ``start``, closed by ``close``
        self._script: Any = None
        self._prefix = f"{prefix}:hold:"
        self._timeout = timeout
        self._me = secrets.token_hex(8)  # this process's field in every hash
        self._seq = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refresher: asyncio.Task[None] | None = None

    @classmethod
    def from_rate_limit(cls, config: Mapping[str, Any] | None) -> RedisHoldings | None:
        """The shared holdings of a plugin whose rate limiter is the Redis one, else None."""
        if not config or not config.get("enabled", True) or config.get("limiter") != "redis":
            return None
        url = config.get("url")
        if not isinstance(url, str):
            return None  # the limiter itself says what is wrong
        return cls(url, str(config.get("prefix", "s3db:rl")), float(config.get("timeout", 0.5)))

    def _key(self, key: str) -> str:
        if len(key) > 200:  # a long user id: a fixed-size name
            key = key[:5] + hashlib.sha256(key.encode()).hexdigest()
        return self._prefix + key

    def _next(self) -> int:
        """The sequence number of a state, taken when the state is read (never after an await),
        so that Redis keeps the newest state whatever order the writes arrive in."""
        self._seq += 1
        return self._seq

    async def _run(self, seq: int, key: str, subs: int, size: int, budget: Budget | None) -> int:
        if self._script is None:
            return 1  # not started (or closed): the local budgets hold
        args = [
            self._me,
            seq,
            subs,
            size,
            -1 if budget is None or budget.subscriptions is None else budget.subscriptions,
            -1 if budget is None or budget.filter_bytes is None else budget.filter_bytes,
            "0" if budget is None else "1",
            int(STALE_SECONDS * 1000),
        ]
        try:
            async with asyncio.timeout(self._timeout):
                return int(await self._script(keys=[self._key(key)], args=args))
        except Exception as exc:
            log.warning("shared holdings unreachable", error=repr(exc))
            return 1  # fail open: the local budgets still hold

    async def claim(self, key: str, subs: int, size: int, budget: Budget) -> str | None:
        """Record this process's new totals under ``key``; the limit passed (``"subscriptions"``
        or ``"filter_bytes"``) when the sum over every live process would pass ``budget``
        (then nothing is recorded), else None."""
        answer = await self._run(self._next(), key, subs, size, budget)
        return {0: "subscriptions", 2: "filter_bytes"}.get(answer)

    def publish(self, key: str, subs: int, size: int) -> None:
        """Record lower totals (a subscription was removed), in the background."""
        try:
            task = asyncio.get_running_loop().create_task(
                self._run(self._next(), key, subs, size, None)
            )
        except RuntimeError:  # no loop: the process is going away, its entries go stale
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self, holdings: Holdings) -> None:
        """Connect, and refresh this process's totals (``holdings``) every ``REFRESH_SECONDS``,
        so that they stay counted while they are held."""
        import redis.asyncio as aioredis  # the `redis` extra, as for the shared rate limiter

        if self._client is None:
            timeout = self._timeout
            self._client = aioredis.Redis.from_url(
                self._url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
            self._script = self._client.register_script(_CLAIM)

        async def refresh() -> None:
            while True:
                await asyncio.sleep(REFRESH_SECONDS)
                for key in list(holdings.totals()):
                    subs, size = holdings.held(key)  # as of now, with its sequence number
                    await self._run(self._next(), key, subs, size, None)

        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(refresh())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        client, self._client, self._script = self._client, None, None
        if client is not None:
            await client.aclose()
