"""The NATS broker: ``nats://host:port``, through nats-py and JetStream.

One JetStream stream per database, ``S3DB_<prefix>``, with a subject per resource:
``s3db.<prefix>.<resource>`` (a ``.`` in a resource name becomes ``~`` so the name stays one
subject token). Retention: ``max_msgs_per_subject = history_size`` and ``max_age =
history_ttl``, on file storage. JetStream has no per-subject byte limit, so ``history_max_bytes``
is kept by the brokers themselves: every process reads every message, counts the bytes of each
resource's latest ones, and when they pass the limit purges the subject down to three quarters
of it (a purge up to a sequence; the newest message always stays). ``history`` also refuses to
read back further than ``history_max_bytes``, so a resume never loads more than that.

Positions: a change's ``offset`` is its JetStream **stream sequence**. It is strictly increasing
per resource (and across resources: the numbers between two changes of one resource belong to
other resources), which is all a position needs; it is not contiguous. To keep ``history``
exact, each message carries the offset of its resource's previous message (``S3db-Prev``) and is
appended with ``Nats-Expected-Last-Subject-Sequence`` set to it, so two processes racing on one
resource cannot both chain to the same predecessor (the loser re-reads the head and retries).
``history(since)`` walks the chain from ``since``: a missing link means the position has left
history. The ``epoch`` rides in each message (``S3db-Epoch``): a resource starts in the stream's
epoch (derived from the stream's creation time, so a recreated stream is a new epoch) and a
process that had to drop changes during an outage starts a new one. Retries carry the same
``Nats-Msg-Id``, so JetStream's duplicate window keeps an append that did arrive from being
stored twice.

Every process reads the stream through an ordered push consumer (delivered in stream order,
re-created by nats-py after a server restart from the last sequence it delivered).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, BadRequestError, NotFoundError

from s3db_core.log import get_logger

from ..change import Change
from ..plugins import await_me_maybe
from .base import (
    CHANNEL_HISTORY_TTL,
    CHANNEL_MAX_KEEP,
    ChannelHandler,
    EphemeralHandler,
    Position,
    StreamBroker,
    decode_change,
    encode_change,
    new_epoch,
    server_url,
)

log = get_logger("s3db.broker.nats")

EPOCH = "S3db-Epoch"
PREV = "S3db-Prev"
WRONG_LAST_SEQUENCE = 10071
STREAM_NAME_IN_USE = 10058
RACE_RETRIES = 20
RECOVER_ATTEMPTS = 25
CHANNEL_STREAM_BYTES = 64 << 20  # every channel's history together (memory; oldest out first)
CHANNEL_MAX_MESSAGE = 1 << 20
MAX_CHANNEL_HEADS = 10_000


class NatsBroker(StreamBroker):
    """Changes shared through one JetStream stream, a subject per resource."""

    name = "nats"

    def __init__(self, url: str, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, config)
        self.stream = f"S3DB_{self.options.prefix}"
        self._subject_prefix = f"s3db.{self.options.prefix}."
        self._server = server_url(url)
        self._writer = new_epoch()
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._stream_epoch = ""
        self._heads: dict[str, tuple[int, str]] = {}  # resource -> (last offset, epoch) seen here
        self._first_attempt: datetime | None = None
        self._subscription: Any = None
        self._generation = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # Ephemeral pub/sub (channels): a core NATS subject outside the JetStream stream's.
        self._ephemeral_subject = f"s3dbch.{self.options.prefix}"
        self._ephemeral: list[EphemeralHandler] = []
        self._ephemeral_task: asyncio.Task[None] | None = None
        self._ephemeral_sub: Any = None
        # Channel history: one JetStream stream in memory, a subject per channel, read by every
        # process through an ordered consumer (offset = stream sequence, chained like changes).
        self._channel_stream = f"S3DBCH_{self.options.prefix}"
        self._channel_prefix = f"s3dbch.{self.options.prefix}.h."
        self._channel_handlers: list[ChannelHandler] = []
        self._channel_task: asyncio.Task[None] | None = None
        self._channel_sub: Any = None
        self._channel_epoch = ""
        self._channel_heads: dict[str, tuple[int, int]] = {}  # channel -> (last seq, previous)
        self._channel_lock = asyncio.Lock()  # one setup at a time (attach, first append, recover)
        # resource -> the (sequence, bytes) of its latest messages, as far as this process saw.
        self._retained: dict[str, _Retained] = {}

    def subject(self, resource: str) -> str:
        return self._subject_prefix + resource.replace(".", "~")

    # -- connection ------------------------------------------------------------------------------
    async def _connect(self) -> None:
        # A process that reaches NATS late reads what was published since it first tried.
        late = self._first_attempt is not None
        if self._first_attempt is None:
            self._first_attempt = datetime.now(UTC)
        nc = await nats.connect(
            self._server,
            connect_timeout=self.options.connect_timeout,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        try:
            js = nc.jetstream(timeout=self.options.publish_timeout)
            policy = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
            if late:
                policy = ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=self._first_attempt
                )
            await self._setup(js, policy)
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js = nc, js

    async def _setup(self, js: JetStreamContext, policy: ConsumerConfig) -> None:
        """Create (or update) the stream, take its epoch, and start reading it."""
        config = StreamConfig(
            name=self.stream,
            subjects=[self._subject_prefix + "*"],
            max_msgs_per_subject=self.options.history_size,
            max_age=self.options.history_ttl,
            duplicate_window=min(120.0, self.options.history_ttl),
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            allow_direct=True,
        )
        try:
            info = await js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
            info = await js.update_stream(config)
        self._stream_epoch = self._epoch_of(info)
        self._generation += 1
        generation = self._generation

        async def deliver(msg: Msg) -> None:  # a replaced subscription's stragglers are dropped
            if generation == self._generation:
                await self._on_message(msg)

        self._subscription = await js.subscribe(
            self._subject_prefix + "*",
            cb=deliver,
            ordered_consumer=True,
            idle_heartbeat=1.0,
            config=policy,
        )

    @staticmethod
    def _epoch_of(info: Any) -> str:
        """The stream's epoch: from its creation time, so a re-created stream is a new epoch."""
        created = str(info.created or info.config.name)
        return hashlib.sha1(created.encode()).hexdigest()[:12]

    async def _recover_stream(self) -> None:
        """After a reconnect: if the server lost the stream (or another process already created
        it again), take the new stream's epoch and read it from its start."""
        js = self._js
        for _ in range(RECOVER_ATTEMPTS):
            if js is None or not self._started:
                return
            try:
                info = await js.stream_info(self.stream)
            except NotFoundError:
                log.warning("nats_stream_lost", stream=self.stream)
                break
            except Exception as exc:  # JetStream may still be starting
                log.info("nats_stream_check_retry", error=repr(exc))
                await asyncio.sleep(0.2)
                continue
            if self._epoch_of(info) == self._stream_epoch:
                return  # the same stream: the ordered consumer carries on by itself
            log.warning("nats_stream_recreated", stream=self.stream)
            break
        else:
            return
        self._continuity_event("lost")
        old, self._subscription = self._subscription, None
        if old is not None:
            try:
                await old.unsubscribe()
            except Exception:
                pass
        self._heads.clear()
        try:
            await self._setup(js, ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        except Exception as exc:
            log.warning("nats_stream_recreate_failed", error=repr(exc))

    async def _disconnect(self) -> None:
        # A later start (a database connected again) reads what is new from then on, not
        # everything since the first start: its listeners heard that already.
        self._first_attempt = None
        self._heads.clear()
        self._channel_epoch = ""
        self._channel_heads.clear()
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            await nc.close()

    async def _interrupt(self) -> None:
        """Nothing blocks in the reader task: nats-py delivers on its own tasks."""

    async def _run_reader(self) -> None:
        """Connect in the background when ``start`` could not (the subscription then reads)."""
        delay = 0.2
        while self._started and self._nc is None:
            try:
                async with asyncio.timeout(self.options.connect_timeout):
                    await self._connect()
                self._continuity_event("up")
                log.info("broker_connected", broker=self.name)
                self._start_retry()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("connect_retry", broker=self.name, error=repr(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _on_error(self, exc: Exception) -> None:
        log.warning("nats_error", error=repr(exc))

    async def _on_disconnected(self) -> None:
        if self._started:
            self._continuity_event("down")
            log.warning("nats_disconnected")

    async def _on_reconnected(self) -> None:
        self._heads.clear()  # re-read heads: the server may have lost or kept anything
        self._channel_heads.clear()
        if self._channel_handlers:
            channel_task = asyncio.get_running_loop().create_task(self._channel_recover())
            self._tasks.add(channel_task)
            channel_task.add_done_callback(self._tasks.discard)
        log.info("nats_reconnected")
        task = asyncio.get_running_loop().create_task(self._recover_then_resume())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recover_then_resume(self) -> None:
        try:
            await self._recover_stream()
        finally:
            if self._started:
                self._continuity_event("up")

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers or {}
        try:
            change = decode_change(msg.data, msg.metadata.sequence.stream, headers.get(EPOCH, ""))
        except Exception:  # not ours (a stray publish on our subjects): skip it
            log.exception("undecodable_message", subject=msg.subject)
            return
        self._retain(change.resource, change.offset or 0, len(msg.data))
        await self.listeners.dispatch(change)

    # -- retention by bytes ----------------------------------------------------------------------
    def _retain(self, resource: str, seq: int, size: int) -> None:
        """Count one message of ``resource``; past ``history_max_bytes`` start a purge of its
        subject down to three quarters of the limit (never its newest message)."""
        kept = self._retained.get(resource)
        if kept is None or (kept.entries and seq <= kept.entries[-1][0]):  # a new stream
            kept = self._retained[resource] = _Retained()
        kept.add(seq, size, self.options.history_size)
        limit = self.options.history_max_bytes
        if kept.bytes <= limit:
            return
        kept.trim(limit * 3 // 4)
        task = asyncio.get_running_loop().create_task(self._purge(resource, kept.entries[0][0]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _purge(self, resource: str, first_kept: int) -> None:
        js = self._js
        if js is None:
            return
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                await js.purge_stream(self.stream, seq=first_kept, subject=self.subject(resource))
        except Exception as exc:  # the next message over the limit tries again
            log.warning("nats_purge_failed", resource=resource, error=repr(exc))

    async def history_bytes(self, resource: str) -> int:
        """Bytes of changes NATS keeps for ``resource``'s resuming subscribers (its messages'
        payloads, read from the stream)."""
        js, subject = self._jetstream(), self.subject(resource)
        total, seq = 0, 0
        while True:
            try:
                msg = await js.get_msg(self.stream, seq=seq + 1, subject=subject, next=True)
            except NotFoundError:
                return total
            total += len(msg.data or b"")
            seq = int(msg.seq or 0)

    # -- streams ---------------------------------------------------------------------------------
    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise ConnectionError("not connected to NATS")
        return self._js

    async def _last(self, resource: str) -> tuple[int, str] | None:
        """(offset, epoch) of the resource's latest message still in the stream, if any."""
        try:
            msg = await self._jetstream().get_msg(self.stream, subject=self.subject(resource))
        except NotFoundError:
            return None
        headers = msg.headers or {}
        return int(msg.seq or 0), headers.get(EPOCH, self._stream_epoch)

    async def _bounds(self) -> tuple[int, int]:
        """The stream's first and last sequence."""
        state = (await self._jetstream().stream_info(self.stream)).state
        return state.first_seq, state.last_seq

    async def _head(self, resource: str) -> tuple[int, int, str]:
        """What the next append chains to: (expected last subject sequence, previous, epoch).

        With no message of the resource left, whatever it had was older than the stream's
        first sequence (only age empties a subject), so ``previous`` is that sequence - 1."""
        last = await self._last(resource)
        if last is not None:
            return last[0], last[0], last[1]
        info = await self._jetstream().stream_info(self.stream)
        # The epoch of the stream as it is now, not the one this process saw last: after the
        # server lost its store, another process may have created the stream again before this
        # one's reconnect check ran, and an append under the old epoch would let an old
        # position match the new history.
        return 0, info.state.first_seq - 1, self._epoch_of(info)

    async def _append(self, change: Change, publish_id: int, new_epoch_: bool) -> Change:
        js = self._jetstream()
        resource = change.resource
        cached = self._heads.get(resource)
        head = (cached[0], cached[0], cached[1]) if cached else await self._head(resource)
        epoch = new_epoch() if new_epoch_ else head[2]
        payload = encode_change(change)
        for _ in range(RACE_RETRIES):
            headers = {
                "Nats-Msg-Id": f"{self._writer}-{publish_id}",
                "Nats-Expected-Last-Subject-Sequence": str(head[0]),
                EPOCH: epoch,
                PREV: str(head[1]),
            }
            try:
                ack = await js.publish(self.subject(resource), payload, headers=headers,
                                       stream=self.stream)  # fmt: skip
            except APIError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
                head = await self._head(resource)  # another process appended first
                if not new_epoch_:
                    epoch = head[2]
                continue
            self._heads[resource] = (ack.seq, epoch)
            return Change(
                change.resource, change.event, change.record, change.previous, change.timestamp,
                change.version, ack.seq, epoch, change.etag,
            )  # fmt: skip
        raise RuntimeError(f"{resource}: lost the append race {RACE_RETRIES} times")

    async def _position(self, resource: str) -> Position:
        last = await self._last(resource)
        if last is not None:
            return Position(*last)
        _, stream_last = await self._bounds()  # nothing of it in history: "as of now"
        return Position(stream_last, self._stream_epoch)

    async def _history(self, resource: str, since: Position) -> list[Change] | None:
        last = await self._last(resource)
        if last is None:  # nothing left: recoverable only if nothing after `since` expired
            first, stream_last = await self._bounds()
            ok = since.epoch == self._stream_epoch and first - 1 <= since.offset <= stream_last
            return [] if ok else None
        if since.epoch != last[1] or not 0 <= since.offset <= last[0]:
            return None
        js, subject = self._jetstream(), self.subject(resource)
        changes: list[Change] = []
        previous = since.offset
        read, limit = 0, self.options.history_max_bytes
        while previous < last[0]:
            try:
                msg = await js.get_msg(self.stream, seq=previous + 1, subject=subject, next=True)
            except NotFoundError:
                return None
            headers = msg.headers or {}
            link = int(headers.get(PREV, "-1"))
            # The first message may chain to any point at or before `since` (nothing of this
            # resource in between); each later one to the message before it.
            if (link > previous if not changes else link != previous) or headers.get(
                EPOCH
            ) != since.epoch:
                return None  # a link of the chain has left history
            previous = int(msg.seq or 0)
            data = msg.data or b""
            read += len(data)
            changes.append(decode_change(data, previous, since.epoch))
            if len(changes) > self.options.history_size or (read > limit and len(changes) > 1):
                return None  # further back than history is kept: never loaded whole
        return changes

    # -- ephemeral pub/sub (channels): core NATS, never stored -------------------------------------
    async def ephemeral_subscribe(self, handler: EphemeralHandler) -> None:
        """Add ``handler``; returns once the server has the subscription (or after
        ``connect_timeout`` while NATS is unreachable: it is made once connected)."""
        self._ephemeral.append(handler)
        if self._ephemeral_task is None:
            loop = asyncio.get_running_loop()
            self._ephemeral_task = loop.create_task(self._ephemeral_attach())
        await asyncio.wait({self._ephemeral_task}, timeout=self.options.connect_timeout)

    async def _ephemeral_attach(self) -> None:
        """Subscribe once connected (``start`` may have left the connecting to the reader
        task); nats-py renews the subscription after a reconnect by itself."""
        while True:
            nc = self._nc
            if nc is None:
                await asyncio.sleep(0.1)
                continue
            try:
                if self._ephemeral_sub is None:
                    self._ephemeral_sub = await nc.subscribe(
                        self._ephemeral_subject, cb=self._on_ephemeral
                    )
                await nc.flush(timeout=max(1, int(self.options.connect_timeout)))  # it has it
                return
            except Exception as exc:  # disconnected meanwhile: nats-py resubscribes by itself
                log.warning("ephemeral_subscribe_retry", error=repr(exc))
                await asyncio.sleep(0.2)

    async def _on_ephemeral(self, msg: Msg) -> None:
        for handler in list(self._ephemeral):
            try:
                await await_me_maybe(handler(msg.data))
            except Exception:
                log.exception("ephemeral_handler_failed")

    async def ephemeral_unsubscribe(self, handler: EphemeralHandler) -> None:
        if handler in self._ephemeral:
            self._ephemeral.remove(handler)
        if self._ephemeral:
            return
        task, self._ephemeral_task = self._ephemeral_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        sub, self._ephemeral_sub = self._ephemeral_sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:
                pass

    async def ephemeral_publish(self, payload: bytes) -> None:
        nc = self._nc
        if nc is None or nc.is_closed:
            return  # not connected: lost, as ephemeral payloads are
        await nc.publish(self._ephemeral_subject, payload)

    # -- channel history: a JetStream stream in memory, a subject per channel ----------------------
    def _channel_subject(self, channel: str) -> str:
        return self._channel_prefix + channel.replace(".", "~")

    async def _channel_setup(self, js: JetStreamContext, *, again: bool = True) -> None:
        """Create (or update) the channels' stream, take its epoch, and read it from now on
        (unless ``again`` is false and that is done already)."""
        async with self._channel_lock:
            if again or not self._channel_epoch:
                await self._channel_setup_locked(js)

    async def _channel_setup_locked(self, js: JetStreamContext) -> None:
        config = StreamConfig(
            name=self._channel_stream,
            subjects=[self._channel_prefix + "*"],
            max_msgs_per_subject=CHANNEL_MAX_KEEP,
            max_age=CHANNEL_HISTORY_TTL,
            max_bytes=CHANNEL_STREAM_BYTES,
            max_msg_size=CHANNEL_MAX_MESSAGE,
            storage=StorageType.MEMORY,
            discard=DiscardPolicy.OLD,
            allow_direct=True,
        )
        try:
            info = await js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
            info = await js.update_stream(config)
        self._channel_epoch = self._epoch_of(info)
        self._channel_heads.clear()
        old, self._channel_sub = self._channel_sub, None
        if old is not None:
            try:
                await old.unsubscribe()
            except Exception:
                pass
        prefix = len(self._channel_prefix)

        async def deliver(msg: Msg) -> None:
            channel = msg.subject[prefix:].replace("~", ".")
            epoch = (msg.headers or {}).get(EPOCH, self._channel_epoch)
            for handler in list(self._channel_handlers):
                try:
                    await await_me_maybe(
                        handler(channel, msg.metadata.sequence.stream, epoch, msg.data)
                    )
                except Exception:
                    log.exception("channel_handler_failed")

        self._channel_sub = await js.subscribe(
            self._channel_prefix + "*", cb=deliver, ordered_consumer=True, idle_heartbeat=1.0,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
        )  # fmt: skip

    async def _channel_attach(self) -> None:
        while True:
            js = self._js
            if js is None:
                await asyncio.sleep(0.1)
                continue
            try:
                await self._channel_setup(js, again=False)
                if self._nc is not None:
                    await self._nc.flush(timeout=max(1, int(self.options.connect_timeout)))
                return
            except Exception as exc:
                log.warning("channel_subscribe_retry", error=repr(exc))
                await asyncio.sleep(0.2)

    async def _channel_recover(self) -> None:
        """After a reconnect: a server that lost the channels' stream (memory) gets it again,
        as a new epoch."""
        js = self._js
        for _ in range(RECOVER_ATTEMPTS):
            if js is None or not self._channel_handlers:
                return
            try:
                info = await js.stream_info(self._channel_stream)
                if self._epoch_of(info) == self._channel_epoch:
                    return
                break
            except NotFoundError:
                break
            except Exception:
                await asyncio.sleep(0.2)
        else:
            return
        try:
            await self._channel_setup(js)
        except Exception as exc:
            log.warning("channel_stream_recreate_failed", error=repr(exc))

    async def channel_subscribe(self, handler: ChannelHandler) -> None:
        """Add ``handler``; returns once the stream is read (or after ``connect_timeout``
        while NATS is unreachable: it is read once connected)."""
        self._channel_handlers.append(handler)
        if self._channel_task is None:
            self._channel_task = asyncio.get_running_loop().create_task(self._channel_attach())
        await asyncio.wait({self._channel_task}, timeout=self.options.connect_timeout)

    async def channel_unsubscribe(self, handler: ChannelHandler) -> None:
        if handler in self._channel_handlers:
            self._channel_handlers.remove(handler)
        if self._channel_handlers:
            return
        task, self._channel_task = self._channel_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        sub, self._channel_sub = self._channel_sub, None
        self._channel_epoch = ""  # a later subscribe reads the stream again
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:
                pass

    async def _channel_ready(self) -> JetStreamContext:
        js = self._jetstream()
        if not self._channel_epoch:
            await self._channel_setup(js, again=False)
        return js

    async def _channel_last(self, js: JetStreamContext, channel: str) -> int | None:
        try:
            msg = await js.get_msg(self._channel_stream, subject=self._channel_subject(channel))
        except NotFoundError:
            return None
        return int(msg.seq or 0)

    async def _channel_head(self, js: JetStreamContext, channel: str) -> tuple[int, int]:
        """(expected last subject sequence, previous) for the next append (see ``_head``)."""
        last = await self._channel_last(js, channel)
        if last is not None:
            return last, last
        state = (await js.stream_info(self._channel_stream)).state
        return 0, state.first_seq - 1

    async def channel_append(
        self, channel: str, payload: bytes, *, keep: int, max_bytes: int
    ) -> Position:
        js = await self._channel_ready()
        subject = self._channel_subject(channel)
        head = self._channel_heads.get(channel) or await self._channel_head(js, channel)
        for _ in range(RACE_RETRIES):
            headers = {
                "Nats-Expected-Last-Subject-Sequence": str(head[0]),
                EPOCH: self._channel_epoch,
                PREV: str(head[1]),
            }
            try:
                ack = await js.publish(subject, payload, headers=headers,
                                       stream=self._channel_stream)  # fmt: skip
            except APIError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
                head = await self._channel_head(js, channel)  # another process appended first
                continue
            if len(self._channel_heads) >= MAX_CHANNEL_HEADS:
                self._channel_heads.clear()
            self._channel_heads[channel] = (ack.seq, ack.seq)
            return Position(ack.seq, self._channel_epoch)
        raise RuntimeError(f"{channel}: lost the append race {RACE_RETRIES} times")

    async def channel_position(self, channel: str) -> Position:
        js = await self._channel_ready()
        last = await self._channel_last(js, channel)
        if last is None:
            last = (await js.stream_info(self._channel_stream)).state.last_seq
        return Position(last, self._channel_epoch)

    async def channel_history(
        self, channel: str, since: Position, *, keep: int, max_bytes: int
    ) -> list[tuple[int, bytes]] | None:
        js = await self._channel_ready()
        if since.epoch != self._channel_epoch:
            return None
        last = await self._channel_last(js, channel)
        if last is None:  # nothing kept: recoverable only if nothing after `since` expired
            state = (await js.stream_info(self._channel_stream)).state
            return [] if state.first_seq - 1 <= since.offset <= state.last_seq else None
        if not 0 <= since.offset <= last:
            return None
        subject = self._channel_subject(channel)
        out: list[tuple[int, bytes]] = []
        previous, read = since.offset, 0
        while previous < last:
            try:
                msg = await js.get_msg(self._channel_stream, seq=previous + 1, subject=subject,
                                       next=True)  # fmt: skip
            except NotFoundError:
                return None
            headers = msg.headers or {}
            link = int(headers.get(PREV, "-1"))
            if (link > previous if not out else link != previous) or headers.get(
                EPOCH
            ) != since.epoch:
                return None  # a link of the chain has left history
            previous = int(msg.seq or 0)
            data = msg.data or b""
            read += len(data)
            out.append((previous, data))
            if len(out) > keep or read > max_bytes:
                return None  # further back than the channel keeps: never loaded whole
        return out


class _Retained:
    """The (sequence, size) of a resource's latest messages and their total size."""

    __slots__ = ("entries", "bytes")

    def __init__(self) -> None:
        self.entries: deque[tuple[int, int]] = deque()
        self.bytes = 0

    def add(self, seq: int, size: int, max_count: int) -> None:
        self.entries.append((seq, size))
        self.bytes += size
        while len(self.entries) > max_count:  # JetStream drops these itself
            self.bytes -= self.entries.popleft()[1]

    def trim(self, target: int) -> None:
        while len(self.entries) > 1 and self.bytes > target:
            self.bytes -= self.entries.popleft()[1]
