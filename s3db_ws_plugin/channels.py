"""Channels: broadcast, presence and typing between connections, never written to the store.

``WebSocketPlugin(channels={"room:*": {...}})`` declares channels by ``fnmatch`` pattern (the
first pattern that matches a name wins; a name no pattern matches does not exist). Frames (each
declared with ``@message`` in ``ChannelFrames``, which ``Handlers`` inherits):

- ``join {channel, info?, self?}`` -> ``channel:joined {channel, members?}``
- ``leave {channel}`` -> ``channel:left {channel}``
- ``channel:message {channel, event?, data}`` -> ``channel:sent {channel}``; the other members
  get ``event {channel, event, data, from: {clientId, userId}, timestamp}``
- ``channel:update {channel, info}`` -> ``channel:updated {channel, member}``

With ``presence``, members get ``event {channel, event: member_added | member_removed |
member_updated, data: {clientId, userId, info, joinedAt}}``. ``userId`` always comes from the
connection's token.

Across processes (a Redis or NATS broker), messages and presence changes travel on the broker's
ephemeral pub/sub (``ephemeral_publish``/``ephemeral_subscribe``; nothing is stored). Each
process (a *node*) announces its own members; every ``presence_timeout / 3`` seconds it sends a
heartbeat with a digest of them, and a node whose view of another differs asks it for its full
state. A node not heard from for ``presence_timeout`` seconds (killed, cut off) has its members
removed everywhere, with ``member_removed``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CollectorRegistry, Gauge

from s3db_core import await_me_maybe
from s3db_core.brokers.base import CHANNEL_MAX_KEEP, Position
from s3db_core.brokers.local import LocalBroker
from s3db_core.log import get_logger

from .connection import text_frame
from .guards import ByKey
from .limits import clip
from .protocol import (
    ErrorCode,
    ProtocolError,
    Request,
    encode,
    flag,
    invalid,
    message,
    now_ms,
    optional_object,
    reply,
    required_object,
    required_text,
    stream_position,
)
from .rate_limiters import RateLimit

if TYPE_CHECKING:
    from s3db_auth_drivers import User
    from s3db_core import Database

    from .connection import Connection
    from .server import Server

log = get_logger("s3db.ws.channels")

Guard = Callable[..., Any]
Frame = dict[str, Any]

NAME = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
MAX_NAME = 128
EVENT_NAME = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
MAX_INFO_BYTES = 1024
MAX_DEPTH = 32  # nesting of `data` and `info`
PRESENCE_EVENTS = frozenset({"member_added", "member_removed", "member_updated"})
DEFAULT_MAX_MEMBERS = 10_000
DEFAULT_MAX_MESSAGE_BYTES = 16_384
DEFAULT_MAX_CHANNELS_PER_CONNECTION = 100
DEFAULT_PRESENCE_TIMEOUT = 30.0
DEFAULT_CHANNEL_RATES = {"messages": 20, "updates": 5}  # per second per connection
STATE_INTERVAL = 1.0  # a node answers at most one state request per this many seconds
OUTBOX_BYTES = 16 << 20  # bytes waiting for the broker before new messages are dropped
STATE_PART_BYTES = 256 * 1024  # a node's state goes out in parts of about this size (NATS: 1 MiB max)
DEFAULT_HISTORY_MAX_BYTES = 1 << 20  # bytes of messages a channel with history keeps
POLICY_KEYS = frozenset(
    {"join", "publish", "presence", "events", "history", "history_max_bytes", "max_members",
     "max_message_bytes", "anonymous"}
)  # fmt: skip


def _count(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer of at least {low}")
    return value


@dataclass(slots=True)
class ChannelPolicy:
    """What one ``channels`` pattern allows."""

    pattern: str
    join: Guard | None = None
    publish: Guard | None = None
    presence: bool = False
    events: frozenset[str] | None = None  # None: any event name
    history: int = 0
    history_max_bytes: int = DEFAULT_HISTORY_MAX_BYTES
    max_members: int = DEFAULT_MAX_MEMBERS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    anonymous: bool = False

    @classmethod
    def from_config(cls, pattern: Any, config: Any) -> ChannelPolicy:
        where = f"channels[{pattern!r}]"
        if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_NAME:
            raise ValueError(f"{where}: a pattern must be a string of 1-{MAX_NAME} characters")
        if config is True:
            config = {}
        if not isinstance(config, Mapping):
            raise ValueError(f"{where}: config must be True or a dict")
        unknown = set(config) - POLICY_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {sorted(unknown)}; use {sorted(POLICY_KEYS)}")
        for kind in ("join", "publish"):
            if config.get(kind) is not None and not callable(config[kind]):
                raise ValueError(f"{where}: {kind!r} must be a guard function")
        events = config.get("events")
        if events is not None:
            if isinstance(events, str) or not all(
                isinstance(e, str) and EVENT_NAME.fullmatch(e) for e in events
            ):
                raise ValueError(f"{where}: 'events' must be a list of event names (or None)")
            if PRESENCE_EVENTS & set(events):
                raise ValueError(f"{where}: 'events' may not name the presence events")
            events = frozenset(events)
        for key in ("presence", "anonymous"):
            if not isinstance(config.get(key, False), bool):
                raise ValueError(f"{where}: {key!r} must be true or false")
        history = _count(f"{where}: 'history'", config.get("history", 0), 0)
        if history > CHANNEL_MAX_KEEP:
            raise ValueError(f"{where}: 'history' may keep at most {CHANNEL_MAX_KEEP} messages")
        history_max_bytes = _count(
            f"{where}: 'history_max_bytes'",
            config.get("history_max_bytes", DEFAULT_HISTORY_MAX_BYTES),
            1024,
        )
        return cls(
            pattern,
            join=config.get("join"),
            publish=config.get("publish"),
            presence=config.get("presence", False),
            events=events,
            history=history,
            history_max_bytes=history_max_bytes,
            max_members=_count(f"{where}: 'max_members'", config.get("max_members", DEFAULT_MAX_MEMBERS), 1),
            max_message_bytes=_count(
                f"{where}: 'max_message_bytes'",
                config.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES),
                1,
            ),
            anonymous=config.get("anonymous", False),
        )


class ChannelContext(ByKey):
    """What channel guards see, by attribute or by key: ``channel``, ``info`` (join),
    ``event`` and ``data`` (publish), ``user``, ``db``."""

    __slots__ = ("channel", "info", "event", "data", "user", "db")

    def __init__(self, *, channel: str, user: User | None, db: Database | None, info: Any = None,
                 event: str | None = None, data: Any = None) -> None:  # fmt: skip
        self.channel = channel
        self.info = info
        self.event = event
        self.data = data
        self.user = user
        self.db = db

    def __repr__(self) -> str:
        return f"ChannelContext(channel={self.channel!r}, user={self.user!r})"


@dataclass(slots=True)
class Member:
    """A member of a channel, on this node or another one."""

    client_id: str
    user_id: Any
    info: dict[str, Any]
    joined_at: int
    node: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "clientId": self.client_id,
            "userId": self.user_id,
            "info": self.info,
            "joinedAt": self.joined_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], node: str) -> Member:
        info = data.get("info")
        return cls(
            str(data["clientId"]),
            data.get("userId"),
            info if isinstance(info, dict) else {},
            int(data.get("joinedAt") or 0),
            node,
        )


def member_digest(channel: str, member: Member) -> int:
    """A stable 64-bit digest of one member's presence (XORed into a node's digest)."""
    blob = orjson.dumps([channel, member.client_id, member.user_id, member.info],
                        option=orjson.OPT_SORT_KEYS, default=str)  # fmt: skip
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big")


@dataclass(slots=True)
class _NodeView:
    """What this node knows of one node's members: (channel, clientId) -> Member, a running
    digest, and when it was last heard from."""

    members: dict[tuple[str, str], Member] = field(default_factory=dict)
    digest: int = 0
    seen: float = 0.0

    def add(self, channel: str, member: Member) -> Member | None:
        key = (channel, member.client_id)
        old = self.members.get(key)
        if old is not None:
            self.digest ^= member_digest(channel, old)
        self.members[key] = member
        self.digest ^= member_digest(channel, member)
        return old

    def remove(self, channel: str, client_id: str) -> Member | None:
        old = self.members.pop((channel, client_id), None)
        if old is not None:
            self.digest ^= member_digest(channel, old)
        return old

    def summary(self) -> list[int]:
        return [len(self.members), self.digest]


@dataclass(slots=True)
class _Local:
    """A connection's membership of a channel on this node. ``held``: while a join reads the
    channel's history, what arrives live waits here ((offset or None, payload, frame)), at most
    the connection's send queue in bytes (``held_bytes``; -1 once that overflowed)."""

    conn: Connection
    receive_own: bool
    held: list[tuple[int | None, bytes, bytes]] | None = None
    held_bytes: int = 0


class Channel:
    """One channel's state on this node: its local connections and (with presence) the member
    list across every node."""

    __slots__ = ("name", "policy", "local", "members")

    def __init__(self, name: str, policy: ChannelPolicy) -> None:
        self.name = name
        self.policy = policy
        self.local: dict[str, _Local] = {}  # clientId -> membership here
        self.members: dict[str, Member] = {}  # clientId -> member (presence, every node)

    def size(self) -> int:
        return len(self.members) if self.policy.presence else len(self.local)


def _depth_ok(value: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            items: Any = current.values()
        elif isinstance(current, list):
            items = current
        else:
            continue
        if depth > limit:
            return False
        stack.extend((item, depth + 1) for item in items)
    return True


def _sized(name: str, value: Any, limit: int) -> bytes:
    """``value`` serialized, refused (``INVALID_MESSAGE``) when deeper than ``MAX_DEPTH`` or
    larger than ``limit`` bytes."""
    if not _depth_ok(value):
        raise invalid(name, f"is nested deeper than {MAX_DEPTH} levels")
    try:
        blob = orjson.dumps(value)
    except TypeError:
        raise invalid(name, "cannot be serialized") from None
    if len(blob) > limit:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"invalid message: {name!r} is {len(blob)} bytes; at most {limit} allowed",
            {"field": name, "message": "too large", "limit": "bytes", "max": limit},
        )
    return blob


def channel_name(msg: dict[str, Any], name: str) -> str:
    """A channel name: at most 128 characters of ``[A-Za-z0-9_.:@-]``."""
    value = required_text(msg, name)
    if len(value) > MAX_NAME or not NAME.fullmatch(value):
        raise invalid(name, f"must be 1-{MAX_NAME} characters of letters, digits and _.:@-")
    return value


def event_name(msg: dict[str, Any], name: str) -> str:
    """A client event name (default ``message``)."""
    value = msg.get(name)
    if value is None:
        return "message"
    if not isinstance(value, str) or not EVENT_NAME.fullmatch(value):
        raise invalid(name, "must be 1-64 characters of letters, digits and _.:@-")
    return value


def any_value(msg: dict[str, Any], name: str) -> Any:
    """Any JSON value (required: ``null`` counts as absent)."""
    if name not in msg:
        raise invalid(name, "is required")
    return msg[name]


class ChannelFrames:
    """The channel frames, declared like every other message type (``Handlers`` inherits
    them); each hands its validated fields to ``self.channels``."""

    channels: Channels

    @message(
        "join", barrier=True, channel=channel_name, info=optional_object, self=flag,
        since=stream_position,
    )  # fmt: skip
    async def join(self, conn: Connection, req: Request) -> Frame | None:
        f = req.fields
        return await self.channels.join(
            conn, f["channel"], f["info"], f["self"], req.request_id, f["since"]
        )

    @message("leave", barrier=True, channel=channel_name)
    async def leave(self, conn: Connection, req: Request) -> Frame:
        self.channels.leave(conn, req.fields["channel"])
        return reply("channel:left", req.request_id, channel=req.fields["channel"])

    @message("channel:message", channel=channel_name, event=event_name, data=any_value)
    async def channel_message(self, conn: Connection, req: Request) -> Frame:
        f = req.fields
        await self.channels.publish(conn, f["channel"], f["event"], f["data"])
        return reply("channel:sent", req.request_id, channel=f["channel"])

    @message("channel:update", channel=channel_name, info=required_object)
    async def channel_update(self, conn: Connection, req: Request) -> Frame:
        f = req.fields
        member = await self.channels.update(conn, f["channel"], f["info"])
        return reply("channel:updated", req.request_id, channel=f["channel"], member=member)


def _forbidden(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.FORBIDDEN, message)


class Channels:
    """Every channel of one plugin on this node, and this node's part in presence across
    nodes (through the database's broker)."""

    def __init__(
        self,
        server: Server,
        config: Mapping[str, Any] | None,
    ) -> None:
        if config is not None and not isinstance(config, Mapping):
            raise ValueError("channels must be a dict {pattern: options}")
        self.server = server
        settings = server.settings
        self.policies = [ChannelPolicy.from_config(p, c) for p, c in (config or {}).items()]
        # Validated by Settings (max_channels_per_connection, presence_timeout, channel_rate_limit).
        self.max_per_connection = settings.max_channels_per_connection
        self.presence_timeout = settings.presence_timeout
        self.rates = dict(settings.channel_rates)
        self._limiters: dict[str, RateLimit] = {}
        self.channels: dict[str, Channel] = {}
        self.of_connection: dict[Connection, set[str]] = {}
        self.node = secrets.token_hex(8)
        self._local_view = _NodeView()  # this node's own members (presence channels)
        self._views: dict[str, _NodeView] = {}  # other nodes
        self._broker: Any = None
        self._history: Any = None  # the broker, once subscribed to channel history
        self._reads = asyncio.Semaphore(16)  # history reads at once (a rejoin storm queues)
        self._outbox: asyncio.Queue[bytes] | None = None
        self._outbox_bytes = 0
        self.dropped = 0  # messages dropped since the outbox was last full (see _emit)
        self._tasks: list[asyncio.Task[None]] = []
        self._last_state = 0.0
        self._parts: dict[str, tuple[str, list[Any]]] = {}  # node -> a state arriving in parts

    def __bool__(self) -> bool:
        return bool(self.policies)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Gauges read at scrape time: channels known here, and members in them (every
        process's, with presence; this process's connections otherwise)."""
        Gauge("s3db_ws_channels", "Channels with members", registry=registry).set_function(
            lambda: len(self.channels)
        )
        Gauge("s3db_ws_channel_members", "Channel members", registry=registry).set_function(
            lambda: sum(c.size() for c in self.channels.values())
        )

    # -- configuration ------------------------------------------------------------------------
    def policy_for(self, name: str) -> ChannelPolicy | None:
        for policy in self.policies:
            if fnmatch.fnmatchcase(name, policy.pattern):
                return policy
        return None

    def _limiter(self, kind: str) -> RateLimit:
        limiter = self._limiters.get(kind)
        if limiter is None:
            base = self.server.settings.rate_limit or {}
            shared = {k: v for k, v in base.items()
                      if k not in ("enabled", "max_requests", "maxRequests", "window_ms",
                                   "windowMs", "strategy")}  # fmt: skip
            shared.setdefault("key", "connection")
            if shared.get("limiter") == "redis":  # its own keys: not the frame budget's
                shared["prefix"] = f"{shared.get('prefix', 's3db:rl')}:ch-{kind}"[:64]
            limiter = RateLimit({**shared, "max_requests": self.rates[kind], "window_ms": 1000})
            self._limiters[kind] = limiter
        return limiter

    async def _rate(self, conn: Connection, kind: str) -> None:
        decision = await self._limiter(kind).hit(conn)
        if not decision.allowed:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"too many channel {kind} per second; retry in {decision.retry_after_ms} ms",
                retryAfterMs=decision.retry_after_ms,
            )

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, db: Database) -> None:
        if not self.policies or self._tasks:
            return
        broker: Any = db.broker
        if self._history is None and any(p.history for p in self.policies):
            if not hasattr(broker, "channel_append"):
                raise ValueError("channels with 'history' need a broker that keeps channel history")
            await await_me_maybe(broker.channel_subscribe(self._on_history))
            self._history = broker
        if isinstance(broker, LocalBroker) or not hasattr(broker, "ephemeral_publish"):
            return  # one process: nothing to tell anyone
        self._broker = broker
        self._outbox = asyncio.Queue()
        self._outbox_bytes = 0
        await await_me_maybe(broker.ephemeral_subscribe(self._on_bus))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._send_loop()), loop.create_task(self._beat_loop())]
        self._emit({"k": "want", "to": "*"})  # everyone's members, at once

    async def stop(self) -> None:
        for conn in list(self.of_connection):
            self.drop_connection(conn)
        for limiter in self._limiters.values():
            close = getattr(limiter.limiter, "close", None)
            if close is not None:
                await await_me_maybe(close())
        self._limiters.clear()
        history, self._history = self._history, None
        if history is not None:
            try:
                await await_me_maybe(history.channel_unsubscribe(self._on_history))
            except Exception:
                log.exception("channel history unsubscribe failed")
        if self._broker is None:
            return
        self._emit({"k": "bye"})
        outbox = self._outbox
        if outbox is not None and not outbox.empty():
            try:
                async with asyncio.timeout(1.0):
                    await outbox.join()
            except TimeoutError:
                pass
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            await await_me_maybe(self._broker.ephemeral_unsubscribe(self._on_bus))
        except Exception:
            log.exception("channel bus unsubscribe failed")
        self._broker = None
        self._views.clear()
        self._parts.clear()
        for channel in self.channels.values():
            channel.members = {k: m for k, m in channel.members.items() if m.node == self.node}

    def _emit(self, message: dict[str, Any]) -> None:
        """Queue ``message`` for the other processes; dropped (and counted) while
        ``OUTBOX_BYTES`` are already waiting (the broker is slow or down: what is ephemeral
        is lost, and the heartbeat digests repair presence afterwards)."""
        if self._outbox is None:
            return
        message["n"] = self.node
        payload = orjson.dumps(message, default=str)
        if self._outbox_bytes + len(payload) > OUTBOX_BYTES:
            if not self.dropped:
                log.warning("channel outbox full, dropping", limit_bytes=OUTBOX_BYTES)
            self.dropped += 1
            return
        if self.dropped:
            log.warning("channel outbox drained", dropped=self.dropped)
            self.dropped = 0
        self._outbox_bytes += len(payload)
        self._outbox.put_nowait(payload)

    async def _send_loop(self) -> None:
        """Publish in order (one at a time, so a join never overtakes its leave)."""
        assert self._outbox is not None
        outbox = self._outbox
        while True:
            payload = await outbox.get()
            self._outbox_bytes -= len(payload)
            try:
                await self._broker.ephemeral_publish(payload)
            except Exception as exc:  # ephemeral: the heartbeat digest repairs presence
                log.warning("channel publish failed", error=repr(exc))
            finally:
                outbox.task_done()

    async def _beat_loop(self) -> None:
        interval = self.presence_timeout / 3
        while True:
            self._emit({"k": "beat", "d": self._local_view.summary()})
            await asyncio.sleep(interval)
            self._expire()

    def _expire(self) -> None:
        horizon = time.monotonic() - self.presence_timeout
        for node, view in list(self._views.items()):
            if view.seen < horizon:
                log.info("channel node expired", node=node, members=len(view.members))
                del self._views[node]
                self._parts.pop(node, None)
                self._replace(node, view, {})

    # -- the bus ------------------------------------------------------------------------------
    def _on_bus(self, payload: bytes) -> None:
        try:
            message = orjson.loads(payload)
            node = message["n"]
            if node == self.node:
                return
            self._handle(node, message)
        except Exception:
            log.exception("channel bus message dropped", error_id=secrets.token_hex(8))

    def _view(self, node: str) -> _NodeView:
        view = self._views.get(node)
        if view is None:
            view = self._views[node] = _NodeView()
        view.seen = time.monotonic()
        return view

    def _handle(self, node: str, message: dict[str, Any]) -> None:
        kind = message["k"]
        if kind == "msg":
            channel = self.channels.get(message["c"])
            if channel is not None and channel.local:
                self._fan(channel, message["e"], None)
            self._view(node)
        elif kind in ("add", "upd"):
            channel = self._channel(message["c"])
            if channel is not None and channel.policy.presence:
                member = Member.from_dict(message["m"], node)
                old = self._view(node).add(channel.name, member)
                channel.members[member.client_id] = member
                self._presence(channel, "member_updated" if old else "member_added", member)
        elif kind == "del":
            view = self._view(node)
            name, client_id = message["c"], message["id"]
            gone = view.remove(name, client_id)
            channel = self.channels.get(name)
            if gone is not None and channel is not None:
                channel.members.pop(client_id, None)
                self._presence(channel, "member_removed", gone)
                self._forget(channel)
        elif kind == "beat":
            view = self._view(node)
            if message.get("d") != view.summary():
                self._emit({"k": "want", "to": node})
        elif kind == "want":
            self._view(node)
            if message.get("to") in ("*", self.node):
                now = time.monotonic()
                if message.get("to") == "*" or now - self._last_state >= STATE_INTERVAL:
                    self._last_state = now
                    self._send_state()
        elif kind == "state":
            view = self._view(node)
            parts = self._parts.get(node)
            if parts is None or parts[0] != message["id"]:
                parts = self._parts[node] = (message["id"], [])
            parts[1].append(message["s"])
            if len(parts[1]) < message["of"]:
                return
            del self._parts[node]
            members = {
                (name, str(m[0])): Member(str(m[0]), m[1], m[2], m[3], node)
                for part in parts[1]
                for name, m in part
            }
            self._replace(node, view, members)
        elif kind == "bye":
            self._parts.pop(node, None)
            left = self._views.pop(node, None)
            if left is not None:
                self._replace(node, left, {})

    def _send_state(self) -> None:
        """This node's members, in parts of about ``STATE_PART_BYTES`` (a part that went
        missing leaves the state incomplete: the next heartbeat's digest asks again)."""
        parts: list[list[Any]] = [[]]
        size = 0
        for (name, _), m in self._local_view.members.items():
            entry = [name, [m.client_id, m.user_id, m.info, m.joined_at]]
            size += len(orjson.dumps(entry, default=str))
            if size > STATE_PART_BYTES and parts[-1]:
                parts.append([])
                size = 0
            parts[-1].append(entry)
        state_id = secrets.token_hex(4)
        for part in parts:
            self._emit({"k": "state", "id": state_id, "of": len(parts), "s": part})

    def _replace(self, node: str, view: _NodeView, members: dict[tuple[str, str], Member]) -> None:
        """Make ``view`` (node's members) ``members``, telling local members what changed."""
        for key in [k for k in view.members if k not in members]:
            gone = view.remove(*key)
            channel = self.channels.get(key[0])
            if gone is not None and channel is not None:
                channel.members.pop(key[1], None)
                self._presence(channel, "member_removed", gone)
                self._forget(channel)
        for key, member in members.items():
            old = view.members.get(key)
            if old is not None and old.info == member.info and old.user_id == member.user_id:
                continue
            channel = self._channel(key[0])
            if channel is None or not channel.policy.presence:
                continue
            view.add(key[0], member)
            channel.members[member.client_id] = member
            self._presence(channel, "member_updated" if old else "member_added", member)

    # -- delivery -----------------------------------------------------------------------------
    def _channel(self, name: str) -> Channel | None:
        """The channel's state here, created when a pattern allows the name."""
        channel = self.channels.get(name)
        if channel is None:
            if len(name) > MAX_NAME or not NAME.fullmatch(name):
                return None
            policy = self.policy_for(name)
            if policy is None:
                return None
            channel = self.channels[name] = Channel(name, policy)
        return channel

    def _forget(self, channel: Channel) -> None:
        if not channel.local and not channel.members:
            self.channels.pop(channel.name, None)

    def _fan(self, channel: Channel, event: Frame, sender: str | None, own: bool = True) -> None:
        """Send ``event`` (serialized once) to the channel's members here, except ``sender``
        unless it joined with ``self`` (and ``own``: never for its own presence events)."""
        self._deliver(channel, encode(event), sender, own, None)

    def _deliver(self, channel: Channel, payload: bytes, sender: str | None, own: bool,
                 offset: int | None) -> None:  # fmt: skip
        frame = text_frame(payload)
        sent = 0
        for client_id, local in list(channel.local.items()):
            if client_id == sender and not (own and local.receive_own):
                continue
            if local.held is not None:  # joining: after the replay
                self._hold(local, offset, payload, frame)
                continue
            try:
                local.conn.send(payload, frame)
                sent += 1
            except Exception:
                log.exception("channel delivery failed", error_id=secrets.token_hex(8),
                              channel=channel.name, receiver=client_id)  # fmt: skip
        self.server.metrics.frames_out.inc(sent)

    def _hold(self, local: _Local, offset: int | None, payload: bytes, frame: bytes) -> None:
        assert local.held is not None
        if local.held_bytes < 0:
            return
        local.held_bytes += len(frame)
        if local.held_bytes > self.server.settings.max_queue_bytes:
            # As a full send queue: closed as a slow consumer; the client resumes from its
            # last position on its next connection.
            local.held.clear()
            local.held_bytes = -1
            local.conn._overflow()
            return
        local.held.append((offset, payload, frame))

    def _presence(self, channel: Channel, kind: str, member: Member) -> None:
        if channel.local:
            event = {"type": "event", "channel": channel.name, "event": kind,
                     "data": member.to_dict(), "timestamp": now_ms()}  # fmt: skip
            self._fan(channel, event, member.client_id, own=False)

    # -- what clients do ----------------------------------------------------------------------
    async def join(
        self, conn: Connection, name: str, info: dict[str, Any] | None, receive_own: bool,
        request_id: Any = None, since: dict[str, Any] | None = None,
    ) -> Frame | None:  # fmt: skip
        policy = self.policy_for(name)
        if policy is None:
            raise _forbidden(f"join {name!r} is not allowed")
        user = conn.user
        if user is None and not policy.anonymous:  # the answer of a channel that does not exist
            raise _forbidden(f"join {name!r} is not allowed")
        info = info or {}
        _sized("info", info, MAX_INFO_BYTES)
        joined = self.of_connection.get(conn)
        channel = self.channels.get(name)
        again = channel is not None and conn.client_id in channel.local
        if not again and joined is not None and len(joined) >= self.max_per_connection:
            raise _forbidden(f"too many channels on this connection (limit {self.max_per_connection})")
        await self._rate(conn, "updates")
        if policy.join is not None:
            ctx = ChannelContext(channel=name, user=user, db=self.server.db, info=info)
            if not await await_me_maybe(policy.join(user, ctx)):
                raise _forbidden(f"join {name!r} is not allowed")
        if conn.closing:
            raise _forbidden("the connection is closing")
        channel = self._channel(name)
        assert channel is not None
        # Only once the guard allowed: whether a channel is full is no outsider's business.
        if not again and channel.size() >= policy.max_members:
            raise _forbidden(f"{name!r} is full (limit {policy.max_members} members)")
        local = channel.local[conn.client_id] = _Local(conn, receive_own)
        if policy.history and self._history is not None:
            local.held = []  # until the reply and the replay are out
        self.of_connection.setdefault(conn, set()).add(name)
        conn.on_close(self.drop_connection)  # its memberships end with the socket
        answer = reply("channel:joined", request_id, channel=name)
        if policy.presence:
            member = Member(conn.client_id, getattr(user, "id", None), info, now_ms(), self.node)
            old = channel.members.get(conn.client_id)
            if old is not None:
                member.joined_at = old.joined_at
            if old is None or old.info != info:
                self._set_member(channel, member, "member_updated" if old else "member_added")
            answer["members"] = [m.to_dict() for m in channel.members.values()]
        if local.held is None:
            return answer
        await self._join_history(conn, channel, local, answer, since)
        return None

    async def _join_history(self, conn: Connection, channel: Channel, local: _Local,
                            answer: Frame, since: dict[str, Any] | None) -> None:  # fmt: skip
        """Answer a join on a channel with history: the position (and with ``since``, whether
        it was recovered), the messages after ``since``, then what arrived meanwhile, each
        message once and in offset order."""
        policy = channel.policy
        budget = min(policy.history_max_bytes, self._replay_budget())
        replay: list[tuple[int, bytes]] | None = []
        head: Position | None = None
        try:
            try:
                async with self._reads:
                    head = await self._history.channel_position(channel.name)
                    if since is not None:
                        position = Position(since["offset"], since["epoch"])
                        replay = await self._history.channel_history(
                            channel.name, position, keep=policy.history, max_bytes=budget
                        )
            except Exception as exc:
                log.warning("channel history unavailable", channel=channel.name, error=repr(exc))
                replay = None
            cut = head.offset if head is not None else None
            if head is not None:
                answer["position"] = head.to_dict()
            if since is not None:
                answer["recovered"] = replay is not None
                if replay is not None:
                    answer["position"] = dict(since)
                    cut = replay[-1][0] if replay else since["offset"]
            self.server.send(conn, answer)
            if channel.local.get(conn.client_id) is not local:  # left (or joined again) meanwhile
                return
            sent = 0
            epoch = answer.get("position", {}).get("epoch", "")
            for offset, payload in replay or ():
                sender, _, body = payload.partition(b"\n")
                if sender.decode() == conn.client_id and not local.receive_own:
                    continue
                conn.send(_positioned(body, offset, epoch))
                sent += 1
            for held_offset, held_payload, frame in local.held or ():
                if held_offset is not None and cut is not None and held_offset <= cut:
                    continue  # in the replay, or before the position the reply gave
                conn.send(held_payload, frame)
                sent += 1
            self.server.metrics.frames_out.inc(sent)
        finally:
            local.held = None

    def _replay_budget(self) -> int:
        return int(self.server.resumer.replay_max_bytes)

    def _set_member(self, channel: Channel, member: Member, kind: str) -> None:
        channel.members[member.client_id] = member
        self._local_view.add(channel.name, member)
        self._presence(channel, kind, member)
        self._emit({"k": "add" if kind == "member_added" else "upd", "c": channel.name,
                    "m": member.to_dict()})  # fmt: skip

    def leave(self, conn: Connection, name: str) -> None:
        channel = self.channels.get(name)
        joined = self.of_connection.get(conn)
        if joined is not None:
            joined.discard(name)
            if not joined:
                del self.of_connection[conn]
        if channel is None or channel.local.pop(conn.client_id, None) is None:
            return
        member = channel.members.pop(conn.client_id, None)
        if member is not None:
            self._local_view.remove(name, conn.client_id)
            self._presence(channel, "member_removed", member)
            self._emit({"k": "del", "c": name, "id": conn.client_id})
        self._forget(channel)

    def drop_connection(self, conn: Connection) -> None:
        """Leave every channel ``conn`` is in (the socket closed)."""
        for name in list(self.of_connection.get(conn, ())):
            try:
                self.leave(conn, name)
            except Exception:
                log.exception("channel leave failed", error_id=secrets.token_hex(8), channel=clip(name))
        self.of_connection.pop(conn, None)

    def _membership(self, conn: Connection, name: str) -> Channel:
        channel = self.channels.get(name)
        if channel is None or conn.client_id not in channel.local:
            raise _forbidden(f"join {name!r} first")
        return channel

    async def publish(self, conn: Connection, name: str, event: str, data: Any) -> None:
        channel = self._membership(conn, name)
        policy = channel.policy
        if event in PRESENCE_EVENTS or (policy.events is not None and event not in policy.events):
            raise _forbidden(f"event {event!r} may not be sent on {name!r}")
        _sized("data", data, policy.max_message_bytes)
        await self._rate(conn, "messages")
        if policy.publish is not None:
            ctx = ChannelContext(channel=name, user=conn.user, db=self.server.db, event=event, data=data)
            if not await await_me_maybe(policy.publish(conn.user, ctx)):
                raise _forbidden(f"sending on {name!r} is not allowed")
        sender = {"clientId": conn.client_id, "userId": getattr(conn.user, "id", None)}
        await self._send(channel, event, data, sender, conn.client_id)

    async def _send(self, channel: Channel, event: str, data: Any, sender: dict[str, Any],
                    sender_id: str | None) -> None:  # fmt: skip
        frame = {"type": "event", "channel": channel.name, "event": event, "data": data,
                 "from": sender, "timestamp": now_ms()}  # fmt: skip
        policy = channel.policy
        if policy.history and self._history is not None:
            # Through the broker: it gives the offset and hands the message to every process
            # (this one included) in offset order; ``_on_history`` delivers it.
            payload = (sender_id or "").encode() + b"\n" + encode(frame)
            try:
                await self._history.channel_append(
                    channel.name, payload, keep=policy.history, max_bytes=policy.history_max_bytes
                )
            except Exception as exc:
                log.warning("channel history append failed", channel=channel.name, error=repr(exc))
                raise ProtocolError(ErrorCode.INTERNAL_ERROR,
                                    "the channel's history is unavailable; try again") from None  # fmt: skip
            return
        self._fan(channel, frame, sender_id)
        self._emit({"k": "msg", "c": channel.name, "e": frame})

    def _on_history(self, name: str, offset: int, epoch: str, payload: bytes) -> None:
        """A message of a channel with history (any process's), in offset order."""
        channel = self.channels.get(name)
        if channel is None or not channel.local:
            return
        sender, _, body = payload.partition(b"\n")
        self._deliver(channel, _positioned(body, offset, epoch), sender.decode() or None, True,
                      offset)  # fmt: skip

    async def update(self, conn: Connection, name: str, info: dict[str, Any]) -> dict[str, Any]:
        channel = self._membership(conn, name)
        if not channel.policy.presence:
            raise _forbidden(f"{name!r} keeps no presence")
        _sized("info", info, MAX_INFO_BYTES)
        await self._rate(conn, "updates")
        old = channel.members.get(conn.client_id)
        if old is None or conn.client_id not in channel.local:  # left while rate-limited
            raise _forbidden(f"join {name!r} first")
        member = Member(old.client_id, old.user_id, info, old.joined_at, self.node)
        self._set_member(channel, member, "member_updated")
        return member.to_dict()

    # -- the server's own ---------------------------------------------------------------------
    def _named(self, name: str) -> Channel | None:
        if not isinstance(name, str) or len(name) > MAX_NAME or not NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a channel name (1-{MAX_NAME} of [A-Za-z0-9_.:@-])")
        if self.policy_for(name) is None:
            raise ValueError(f"no channels pattern matches {name!r}")
        return self.channels.get(name)

    async def broadcast(self, name: str, event: str, data: Any) -> None:
        self._named(name)
        if not isinstance(event, str) or not EVENT_NAME.fullmatch(event) or event in PRESENCE_EVENTS:
            raise ValueError(f"{event!r} is not an event name a channel may carry")
        channel = self._channel(name)
        assert channel is not None
        try:
            await self._send(channel, event, data, {"clientId": None, "userId": None}, None)
        except ProtocolError as exc:
            raise ConnectionError(str(exc)) from None
        finally:
            self._forget(channel)

    async def presence(self, name: str) -> list[dict[str, Any]]:
        channel = self._named(name)
        if channel is None:
            return []
        return [m.to_dict() for m in channel.members.values()]


def _positioned(body: bytes, offset: int, epoch: str) -> bytes:
    """A message frame (``body``, a JSON object) with its ``offset`` and ``epoch``."""
    return body[:-1] + b',"offset":%d,"epoch":%s}' % (offset, orjson.dumps(epoch))
