"""The Redis broker: ``redis://host:port/db`` (``rediss://`` for TLS), through redis-py asyncio.

Keys, under the ``prefix`` option (default ``s3db``; one prefix per database sharing a Redis):

* ``P:{R}:stream`` - resource R's stream; each entry holds ``o`` (offset), ``e`` (epoch) and ``d``
  (the change as JSON). Trimmed on every append to ``history_ttl`` (``MINID``, from Redis's own
  clock), ``history_size`` entries and ``history_max_bytes`` bytes of ``d`` (oldest first; the
  newest entry always stays).
* ``P:{R}:sizes`` - list of the byte size of each entry's ``d``, oldest first, kept in step
  with the stream so trimming knows what it frees without reading the entries.
* ``P:{R}:meta`` - hash ``{epoch, offset, bytes}`` (``bytes``: the sum of ``sizes``). One Lua script increments the offset and appends the
  entry, so offsets are allocated atomically with the append and are contiguous within an epoch
  (which is what makes ``history`` exact). The epoch is replaced when history is lost: the meta
  hash is gone (Redis restarted empty), or the stream is gone while the offset says it had
  entries, or the publishing process had to drop changes during an outage.
* ``P:resources`` (set) and ``P:resources:log`` (stream) - which resources have streams; the
  reader learns of a new resource through the log, without polling.
* ``P:writer:{id}`` - per publishing process, the ids of its last 1,000 appends (a sorted set
  that expires after an hour idle), so a retried append that had in fact reached Redis is not
  appended twice, even while other appends of the process were in flight.
* ``P:seq`` - the database's commit counter: the publish script increments it and stores the
  value in the entry (``g``), atomically with the append, so ``g`` orders every change of every
  resource in the order Redis appended them.

Every process runs one reader task: ``XREAD BLOCK`` over the log and every known resource stream,
dispatching the entries to the listeners (a process's own writes included) in ``g`` order across
resources, not stream by stream. One XREAD is a consistent view (Redis runs commands one at a
time), so the merge is exact with two precautions: a stream cut off by ``COUNT`` bounds what may
be dispatched to its last ``g`` (the rest is read again next time), and a read that announces a
new resource dispatches nothing (the next read includes the new stream, whose first changes may
precede the others).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from s3db_core.log import get_logger

from ..change import Change
from ..plugins import await_me_maybe
from .base import (
    CHANNEL_HISTORY_TTL,
    ChannelHandler,
    EphemeralHandler,
    Position,
    StreamBroker,
    decode_change,
    encode_change,
    new_epoch,
    server_url,
)

log = get_logger("s3db.broker.redis")

WRITER_TTL = 3600  # seconds a process's dedupe record outlives its last publish

# KEYS: stream, meta, resources, resources log, writer, sizes, commit counter
# ARGV: resource, payload, fresh epoch, reset (0/1), maxlen, ttl ms, publish id, writer ttl s,
#       max bytes
PUBLISH = """
if redis.call('ZSCORE', KEYS[5], ARGV[7]) then
  return {-1, ''}
end
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local offset = tonumber(redis.call('HGET', KEYS[2], 'offset') or '0')
local exists = redis.call('EXISTS', KEYS[1]) == 1
if (not epoch) or ARGV[4] == '1' or (offset > 0 and not exists) then
  epoch = ARGV[3]
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', 0)
end
-- The sizes list follows the stream entry for entry; rebuild it when it does not (a stream
-- written before sizes were kept, or one that vanished).
local length = exists and redis.call('XLEN', KEYS[1]) or 0
if redis.call('LLEN', KEYS[6]) ~= length then
  redis.call('DEL', KEYS[6])
  local total = 0
  for _, entry in ipairs(length > 0 and redis.call('XRANGE', KEYS[1], '-', '+') or {}) do
    local size = 0
    for i = 1, #entry[2], 2 do
      if entry[2][i] == 'd' then size = #entry[2][i + 1] end
    end
    redis.call('RPUSH', KEYS[6], size)
    total = total + size
  end
  redis.call('HSET', KEYS[2], 'bytes', total)
end
offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
local seq = redis.call('INCR', KEYS[7])
redis.call('XADD', KEYS[1], '*', 'o', offset, 'e', epoch, 'd', ARGV[2], 'g', seq)
redis.call('RPUSH', KEYS[6], #ARGV[2])
local bytes = redis.call('HINCRBY', KEYS[2], 'bytes', #ARGV[2])
length = length + 1
local function drop(count)
  local sizes = redis.call('LPOP', KEYS[6], count) or {}
  local freed = 0
  for _, size in ipairs(sizes) do freed = freed + tonumber(size) end
  bytes = redis.call('HINCRBY', KEYS[2], 'bytes', -freed)
  length = length - count
end
local now = redis.call('TIME')
local horizon = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[6])
if horizon > 0 then
  local expired = redis.call('XTRIM', KEYS[1], 'MINID', tostring(horizon))
  if expired > 0 then drop(expired) end
end
local maxlen = tonumber(ARGV[5])
if length > maxlen then
  redis.call('XTRIM', KEYS[1], 'MAXLEN', maxlen)
  drop(length - maxlen)
end
local maxbytes = tonumber(ARGV[9])
while length > 1 and bytes > maxbytes do
  redis.call('XTRIM', KEYS[1], 'MAXLEN', length - 1)
  drop(1)
end
if redis.call('SADD', KEYS[3], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[4], '*', 'r', ARGV[1])
end
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[7])
redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -1001)
redis.call('EXPIRE', KEYS[5], ARGV[8])
return {offset, epoch}
"""

# KEYS: meta; ARGV: fresh epoch. The position, creating the epoch if the resource has none yet.
POSITION = """
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
return {tonumber(redis.call('HGET', KEYS[1], 'offset') or '0'), redis.call('HGET', KEYS[1], 'epoch')}
"""

# KEYS: stream, meta; ARGV: epoch, since offset, ttl ms, at most.
# The entries after `since` (false when not recoverable): contiguous offsets make the last
# (offset - since) entries exactly those, if the oldest of them is since + 1 in this epoch.
HISTORY = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if epoch ~= ARGV[1] then return false end
local last = tonumber(redis.call('HGET', KEYS[2], 'offset') or '0')
local since = tonumber(ARGV[2])
if since > last or since < 0 then return false end
if since == last then return {} end
local count = last - since
if count > tonumber(ARGV[4]) then return false end
local now = redis.call('TIME')
local horizon = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[3])
local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', count)
if #entries < count then return false end
local oldest = entries[#entries]
local ms = tonumber(string.match(oldest[1], '^(%d+)'))
if ms < horizon then return false end
local fields = oldest[2]
if fields[2] ~= tostring(since + 1) or fields[4] ~= epoch then return false end
return entries
"""

# KEYS: resources, resources log; ARGV: stream key prefix, suffix, and optionally a start id.
# Everything the reader needs to start: the log's cursor and each known resource with its
# stream's cursor, read atomically. Without a start id a cursor is the stream's last id (read
# what comes next); with one (a reader that could not start on time) it is that id.
CURSORS = """
local function cursor(key)
  if ARGV[3] then return ARGV[3] end
  local newest = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if #newest == 0 then return '0-0' end
  return newest[1][1]
end
local out = {cursor(KEYS[2])}
for _, resource in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  table.insert(out, resource)
  table.insert(out, cursor(ARGV[1] .. resource .. ARGV[2]))
end
return out
"""


# Channel history. KEYS: stream, meta, sizes; ARGV: payload, fresh epoch, keep, max bytes,
# ttl ms, pub/sub key, channel. Offsets are allocated with the append and announced with the same
# script (PUBLISH inside it), so every process hears a channel's messages in offset order.
CHANNEL_APPEND = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local offset = tonumber(redis.call('HGET', KEYS[2], 'offset') or '0')
if (not epoch) or (offset > 0 and redis.call('EXISTS', KEYS[1]) == 0) then
  epoch = ARGV[2]
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', 0, 'bytes', 0)
end
offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
redis.call('XADD', KEYS[1], '*', 'o', offset, 'd', ARGV[1])
redis.call('RPUSH', KEYS[3], #ARGV[1])
local bytes = redis.call('HINCRBY', KEYS[2], 'bytes', #ARGV[1])
local length = redis.call('XLEN', KEYS[1])
local keep, maxbytes = tonumber(ARGV[3]), tonumber(ARGV[4])
while length > 1 and (length > keep or bytes > maxbytes) do
  redis.call('XTRIM', KEYS[1], 'MAXLEN', length - 1)
  bytes = redis.call('HINCRBY', KEYS[2], 'bytes', -tonumber(redis.call('LPOP', KEYS[3]) or '0'))
  length = length - 1
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
redis.call('PUBLISH', ARGV[6], offset .. ' ' .. epoch .. ' ' .. ARGV[7] .. ' ' .. ARGV[1])
return {offset, epoch}
"""

# KEYS: stream, meta, sizes; ARGV: fresh epoch, ttl ms. The position (an epoch made if none).
CHANNEL_POSITION = """
if redis.call('HSETNX', KEYS[2], 'epoch', ARGV[1]) == 1 then
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('HSET', KEYS[2], 'offset', 0, 'bytes', 0)
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {tonumber(redis.call('HGET', KEYS[2], 'offset') or '0'), redis.call('HGET', KEYS[2], 'epoch')}
"""

# KEYS: stream, meta; ARGV: epoch, since, keep. Offsets are contiguous within an epoch, so the
# last (offset - since) entries are exactly those after `since`, if that many are kept.
CHANNEL_HISTORY = """
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[1] then return false end
local last = tonumber(redis.call('HGET', KEYS[2], 'offset') or '0')
local since = tonumber(ARGV[2])
if since > last or since < 0 then return false end
if since == last then return {} end
local count = last - since
if count > tonumber(ARGV[3]) then return false end
local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', count)
if #entries < count then return false end
return entries
"""


class RedisBroker(StreamBroker):
    """Changes shared through Redis streams, one per resource."""

    name = "redis"
    contiguous_offsets = True  # a jump in a resource's offsets is a gap
    block_ms = 5000  # one XREAD waits at most this long before it is issued again
    batch = 1000  # entries one XREAD returns per stream at most

    def __init__(self, url: str, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, config)
        p = self.options.prefix
        self._key_prefix = f"{p}:{{"
        self._key_suffix = "}:stream"
        self._resources_key = f"{p}:resources"
        self._log_key = f"{p}:resources:log"
        self._writer_key = f"{p}:writer:{new_epoch()}"
        self._seq_key = f"{p}:seq"
        target = server_url(url)
        timeout = self.options.publish_timeout
        # One immediate retry replaces a pooled connection Redis closed (a restart); a retried
        # append is deduplicated by its publish id. Outages are the outage buffer's business.
        self._client = aioredis.Redis.from_url(
            target, socket_timeout=max(timeout, 1.0), socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )  # fmt: skip
        self._reader = aioredis.Redis.from_url(
            target, socket_timeout=self.block_ms / 1000 + 5, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )  # fmt: skip
        self._publish_script = self._client.register_script(PUBLISH)
        self._position_script = self._client.register_script(POSITION)
        self._history_script = self._client.register_script(HISTORY)
        self._cursors_script = self._reader.register_script(CURSORS)
        self._cursors: dict[Any, Any] = {}  # stream key -> last id read (bytes)
        self._ttl_ms = int(self.options.history_ttl * 1000)
        self._started_ms = 0
        # Ephemeral pub/sub (channels): PUBLISH/SUBSCRIBE on one key, read by its own task.
        self._target = target
        self._ephemeral_key = f"{p}:channels"
        self._ephemeral: list[EphemeralHandler] = []
        self._ephemeral_task: asyncio.Task[None] | None = None
        self._ephemeral_ready = asyncio.Event()
        # Channel history: a stream per channel; its messages are announced on their own key.
        self._channel_key = f"{p}:chhist"
        self._channel_handlers: list[ChannelHandler] = []
        self._channel_append_script = self._client.register_script(CHANNEL_APPEND)
        self._channel_position_script = self._client.register_script(CHANNEL_POSITION)
        self._channel_history_script = self._client.register_script(CHANNEL_HISTORY)

    def _channel_keys(self, channel: str) -> list[str]:
        base = f"{self.options.prefix}:ch:{{{channel}}}"
        return [f"{base}:stream", f"{base}:meta", f"{base}:sizes"]

    def stream_key(self, resource: str) -> str:
        return f"{self._key_prefix}{resource}{self._key_suffix}"

    def meta_key(self, resource: str) -> str:
        return f"{self.options.prefix}:{{{resource}}}:meta"

    def sizes_key(self, resource: str) -> str:
        return f"{self.options.prefix}:{{{resource}}}:sizes"

    async def history_bytes(self, resource: str) -> int:
        """Bytes of changes Redis keeps for ``resource``'s resuming subscribers (the sum of
        the entries' payloads, as trimming counts them)."""
        return int(await self._client.hget(self.meta_key(resource), "bytes") or 0)

    async def _connect(self) -> None:
        self._started_ms = int(time.time() * 1000)
        await self._client.ping()
        await self._load_cursors()

    async def _disconnect(self) -> None:
        await self._client.aclose()
        await self._reader.aclose()

    async def _interrupt(self) -> None:
        await self._reader.connection_pool.disconnect(inuse_connections=True)

    async def memory_usage(self, resource: str) -> int:
        """Bytes Redis holds for ``resource``'s history (stream, sizes, meta), counted exactly."""
        used = 0
        for key in (self.stream_key(resource), self.meta_key(resource), self.sizes_key(resource)):
            used += int(await self._client.memory_usage(key, samples=0) or 0)
        return used

    async def _load_cursors(self, since_ms: int | None = None) -> None:
        args = [self._key_prefix, self._key_suffix]
        if since_ms is not None:
            args.append(f"{since_ms}-0")
        reply = await self._cursors_script(keys=[self._resources_key, self._log_key], args=args)
        cursors = {self._log_key.encode(): reply[0]}
        for i in range(1, len(reply), 2):
            cursors[self.stream_key(reply[i].decode()).encode()] = reply[i + 1]
        self._cursors = cursors

    async def _append(self, change: Change, publish_id: int, new_epoch_: bool) -> Change:
        resource = change.resource
        offset, epoch = await self._publish_script(
            keys=[self.stream_key(resource), self.meta_key(resource), self._resources_key,
                  self._log_key, self._writer_key, self.sizes_key(resource), self._seq_key],
            args=[resource, encode_change(change), new_epoch(), int(new_epoch_),
                  self.options.history_size, self._ttl_ms, publish_id, WRITER_TTL,
                  self.options.history_max_bytes],
        )  # fmt: skip
        if offset == -1:  # an earlier attempt of this very publish had reached Redis
            return change
        return Change(
            change.resource, change.event, change.record, change.previous, change.timestamp,
            change.version, int(offset), epoch.decode(), change.etag,
        )  # fmt: skip

    async def _position(self, resource: str) -> Position:
        offset, epoch = await self._position_script(
            keys=[self.meta_key(resource)], args=[new_epoch()]
        )
        return Position(int(offset), epoch.decode())

    async def _history(self, resource: str, since: Position) -> list[Change] | None:
        entries = await self._history_script(
            keys=[self.stream_key(resource), self.meta_key(resource)],
            args=[since.epoch, since.offset, self._ttl_ms, self.options.history_size],
        )
        if entries is None:
            return None
        changes = []
        for _id, fields in reversed(entries):
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            changes.append(decode_change(values[b"d"], int(values[b"o"]), values[b"e"].decode()))
        return changes

    async def _run_reader(self) -> None:
        delay = 0.05
        while self._started:
            try:
                if not self._cursors:  # Redis was down at start: read from the start time
                    await self._load_cursors(self._started_ms)
                if not self.reading:  # back after an error: say so before reading on
                    await self._reader.ping()
                    self._continuity_event("up")
                reply: Any = await self._reader.xread(
                    self._cursors, count=self.batch, block=self.block_ms
                )
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._started:
                    return
                self._continuity_event("down")
                log.warning("reader_retry", error=repr(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if reply:
                await self._dispatch_batch(reply)

    async def _dispatch_batch(self, reply: Any) -> None:
        """Hand one XREAD's entries to the listeners in commit order across resources, and move
        each stream's cursor past what was handed over (nothing else)."""
        log_key = self._log_key.encode()
        streams = []
        announced = False
        for key, entries in reply:
            if key == log_key:
                announced = True
                for entry_id, fields in entries:  # a new resource: read its stream from now on
                    stream = self.stream_key(fields[b"r"].decode()).encode()
                    self._cursors.setdefault(stream, b"0-0")
                    self._cursors[log_key] = entry_id
            elif entries:
                streams.append((key, entries))
        if announced:
            # The new stream was not part of this read, and its first changes may precede the
            # others read here: read again, with it, before handing anything over.
            return
        if len(streams) == 1:  # one resource: its stream order is commit order
            key, entries = streams[0]
            for entry_id, fields in entries:
                self._cursors[key] = entry_id
                await self._dispatch_entry(key, entry_id, fields)
            return
        merged = []
        cutoff = None  # what a stream cut off by COUNT might still hide: nothing after its last
        for key, entries in streams:
            for entry_id, fields in entries:
                merged.append((_commit_seq(fields), key, entry_id, fields))
            if len(entries) >= self.batch:
                last = _commit_seq(entries[-1][1])
                cutoff = last if cutoff is None else min(cutoff, last)
        merged.sort(key=lambda item: item[0])  # stable: equal (legacy) keys keep stream order
        for seq, key, entry_id, fields in merged:
            if cutoff is not None and seq > cutoff:
                break  # read again next time, after what this stream still holds
            self._cursors[key] = entry_id
            await self._dispatch_entry(key, entry_id, fields)

    async def _dispatch_entry(self, key: bytes, entry_id: bytes, fields: dict[bytes, Any]) -> None:
        try:
            change = decode_change(fields[b"d"], int(fields[b"o"]), fields[b"e"].decode())
        except Exception:  # not ours (a stray XADD): never stop the reader
            log.exception("undecodable_entry", stream=key, id=entry_id)
            return
        await self.listeners.dispatch(change)

    # -- ephemeral pub/sub (channels): Redis PUBLISH/SUBSCRIBE, never stored ---------------------
    async def ephemeral_subscribe(self, handler: EphemeralHandler) -> None:
        """Add ``handler``; returns once Redis has confirmed the subscription (or after
        ``connect_timeout`` while Redis is unreachable: the reader keeps trying)."""
        self._ephemeral.append(handler)
        await self._ephemeral_start()

    async def _ephemeral_start(self) -> None:
        if self._ephemeral_task is None:
            self._ephemeral_ready = asyncio.Event()
            loop = asyncio.get_running_loop()
            self._ephemeral_task = loop.create_task(self._ephemeral_reader())
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                await self._ephemeral_ready.wait()
        except TimeoutError:
            log.warning("ephemeral_subscribe_pending", broker=self.name)

    async def ephemeral_unsubscribe(self, handler: EphemeralHandler) -> None:
        if handler in self._ephemeral:
            self._ephemeral.remove(handler)
        await self._ephemeral_stop()

    async def _ephemeral_stop(self) -> None:
        task = self._ephemeral_task
        if not self._ephemeral and not self._channel_handlers and task is not None:
            self._ephemeral_task = None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def ephemeral_publish(self, payload: bytes) -> None:
        async with asyncio.timeout(self.options.publish_timeout):
            await self._client.publish(self._ephemeral_key, payload)

    async def _ephemeral_reader(self) -> None:
        """Subscribe and hand every payload to the handlers; resubscribe after an error
        (what was published meanwhile is lost: ephemeral)."""
        timeout = self.options.publish_timeout
        client = aioredis.Redis.from_url(
            self._target, socket_timeout=10.0, socket_connect_timeout=timeout,
            health_check_interval=5, retry=Retry(NoBackoff(), 0),
        )  # fmt: skip
        delay = 0.05
        channel_key = self._channel_key.encode()
        try:
            while True:
                pubsub = client.pubsub()
                try:
                    await pubsub.subscribe(self._ephemeral_key, self._channel_key)
                    while True:  # the confirmations: from here on nothing published is missed
                        confirmed = await pubsub.get_message(timeout=5.0)
                        if (confirmed is not None and confirmed.get("type") == "subscribe"
                                and confirmed.get("data") == 2):  # fmt: skip
                            break
                    self._ephemeral_ready.set()
                    delay = 0.05
                    while True:
                        message = await pubsub.get_message(timeout=5.0)
                        if message is None or message.get("type") != "message":
                            continue
                        if message["channel"] == channel_key:
                            await self._on_channel_message(message["data"])
                            continue
                        for handler in list(self._ephemeral):
                            try:
                                await await_me_maybe(handler(message["data"]))
                            except Exception:
                                log.exception("ephemeral_handler_failed")
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("ephemeral_reader_retry", error=repr(exc), retry_in=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                finally:
                    try:
                        await pubsub.aclose()
                    except Exception:
                        pass
        finally:
            await client.aclose()

    # -- channel history: a stream per channel, announced by the append script ------------------
    async def channel_subscribe(self, handler: ChannelHandler) -> None:
        """Add ``handler``; returns once Redis has confirmed the subscription (see
        ``ephemeral_subscribe``)."""
        self._channel_handlers.append(handler)
        await self._ephemeral_start()

    async def channel_unsubscribe(self, handler: ChannelHandler) -> None:
        if handler in self._channel_handlers:
            self._channel_handlers.remove(handler)
        await self._ephemeral_stop()

    async def _on_channel_message(self, data: bytes) -> None:
        try:
            offset, epoch, channel, payload = data.split(b" ", 3)
            args = (channel.decode(), int(offset), epoch.decode(), payload)
        except Exception:  # not ours: a stray PUBLISH on the key
            log.warning("undecodable_channel_message")
            return
        for handler in list(self._channel_handlers):
            try:
                await await_me_maybe(handler(*args))
            except Exception:
                log.exception("channel_handler_failed")

    async def channel_append(
        self, channel: str, payload: bytes, *, keep: int, max_bytes: int
    ) -> Position:
        async with asyncio.timeout(self.options.publish_timeout):
            offset, epoch = await self._channel_append_script(
                keys=self._channel_keys(channel),
                args=[payload, new_epoch(), keep, max_bytes, int(CHANNEL_HISTORY_TTL * 1000),
                      self._channel_key, channel],
            )  # fmt: skip
        return Position(int(offset), epoch.decode())

    async def channel_position(self, channel: str) -> Position:
        async with asyncio.timeout(self.options.publish_timeout):
            offset, epoch = await self._channel_position_script(
                keys=self._channel_keys(channel),
                args=[new_epoch(), int(CHANNEL_HISTORY_TTL * 1000)],
            )
        return Position(int(offset), epoch.decode())

    async def channel_history(
        self, channel: str, since: Position, *, keep: int, max_bytes: int
    ) -> list[tuple[int, bytes]] | None:
        keys = self._channel_keys(channel)
        async with asyncio.timeout(self.options.connect_timeout):
            entries = await self._channel_history_script(
                keys=keys[:2], args=[since.epoch, since.offset, keep]
            )
        if entries is None:
            return None
        out: list[tuple[int, bytes]] = []
        total = 0
        for _id, fields in reversed(entries):
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            total += len(values[b"d"])
            if total > max_bytes:
                return None
            out.append((int(values[b"o"]), values[b"d"]))
        return out


def _commit_seq(fields: dict[bytes, Any]) -> int:
    """An entry's place in the database's commit order (``g``); -1 for an entry without one
    (a stray XADD, or one appended by an older version), which then keeps its stream's order."""
    try:
        return int(fields[b"g"])
    except (KeyError, ValueError, TypeError):
        return -1
