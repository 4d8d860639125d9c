"""Channels in the Python client: ``Client.join`` returns a ``Channel``.

    async with client.join("room:1", info={"name": "Ada"}) as room:
        print(room.members)                       # {clientId: {clientId, userId, info, joinedAt}}
        await room.send("typing", {"on": True})
        await room.update({"name": "Ada L."})
        async for message in room:                # ChannelMessage: messages and presence events
            print(message.event, message.data, message.sender)

``members`` follows the presence events as they arrive. After a reconnect the client joins
again by itself (same ``info`` as the last update); members that came or went meanwhile are
reported as ``member_added``/``member_removed`` messages. On a channel that keeps ``history``
the client remembers the position of the last message and rejoins from it, so the messages
sent meanwhile arrive in order, none twice; when the server no longer has them all (``recovered``
false) the iterator yields a ``reload`` message (``data`` None) and the messages after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from s3db_core.log import get_logger

from .errors import ClientError, SlowConsumer

if TYPE_CHECKING:
    from .client import Client

log = get_logger("s3db.client")

MEMBER_ADDED, MEMBER_REMOVED, MEMBER_UPDATED = "member_added", "member_removed", "member_updated"
RELOAD = "reload"  # some messages sent while disconnected could not be replayed
PRESENCE = frozenset({MEMBER_ADDED, MEMBER_REMOVED, MEMBER_UPDATED})


@dataclass(frozen=True, slots=True)
class ChannelMessage:
    """One event of a channel: a message (``sender`` is its ``from``: ``{clientId, userId}``)
    or a presence event (``member_added``/``member_removed``/``member_updated``, ``data`` the
    member; ``sender`` None)."""

    channel: str
    event: str
    data: Any
    sender: dict[str, Any] | None
    timestamp: int

    @property
    def is_presence(self) -> bool:
        return self.event in PRESENCE


class _End:
    __slots__ = ("error",)

    def __init__(self, error: ClientError | None) -> None:
        self.error = error


class Channel:
    """A joined channel: ``members``, ``send``, ``update``, ``leave``, and an async iterator
    of ``ChannelMessage``."""

    def __init__(
        self,
        client: Client,
        name: str,
        info: Mapping[str, Any] | None,
        receive_own: bool,
        max_pending: int,
    ) -> None:
        self.client = client
        self.name = name
        self.info: dict[str, Any] | None = dict(info) if info is not None else None
        self.receive_own = receive_own
        self.max_pending = max_pending
        self.members: dict[str, dict[str, Any]] = {}
        self.closed = False
        self._me: str | None = None
        self._former: set[str] = set()  # this client's ids on earlier connections
        # The position of the last message (channels with history): where a rejoin resumes.
        self.position: dict[str, Any] | None = None
        self.recovered: bool | None = None  # whether the last rejoin replayed everything
        self._queue: asyncio.Queue[ChannelMessage | _End] = asyncio.Queue()

    def __repr__(self) -> str:
        return f"<Channel {self.name} members={len(self.members)}>"

    def frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "join", "channel": self.name}
        if self.info is not None:
            frame["info"] = self.info
        if self.receive_own:
            frame["self"] = True
        if self.position is not None:
            frame["since"] = self.position
        return frame

    # -- what the app does --------------------------------------------------------------------
    async def send(self, event: str = "message", data: Any = None) -> None:
        """Send ``event`` with ``data`` to the other members (and to this one if it joined with
        ``receive_own``)."""
        await self.client.request(
            {"type": "channel:message", "channel": self.name, "event": event, "data": data}
        )

    async def update(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """Replace this member's presence ``info``; returns the member."""
        reply = await self.client.request(
            {"type": "channel:update", "channel": self.name, "info": dict(info)}
        )
        self.info = dict(info)
        member = reply.get("member")
        if isinstance(member, dict) and isinstance(member.get("clientId"), str):
            self.members[member["clientId"]] = member
        return member if isinstance(member, dict) else {}

    async def leave(self) -> None:
        """Leave the channel and end the iterator."""
        if self.closed:
            return
        self._end()
        await self.client.leave_channel(self)

    # -- what the client does -----------------------------------------------------------------
    def end(self, error: ClientError | None = None) -> None:
        """End the iterator (raising ``error`` to its reader, if given): the client's
        connection ended for good, or a rejoin was refused. To leave, ``await leave()``."""
        self._end(error)

    def joined(self, reply: dict[str, Any], *, again: bool) -> None:
        """The reply to a join: the member list (on a rejoin, what changed meanwhile is
        reported as presence events)."""
        position = reply.get("position")
        recovered = reply.get("recovered")
        if isinstance(recovered, bool):
            self.recovered = recovered
        if recovered is False:
            log.info("channel not recovered: reload", channel=self.name)
            self._push(ChannelMessage(self.name, RELOAD, None, None, 0))
        if isinstance(position, dict) and recovered is not True:
            self.position = position
        listed = reply.get("members")
        if self._me is not None and self._me != self.client.client_id:
            self._former.add(self._me)
        if not isinstance(listed, list):
            self._me = self.client.client_id
            return
        members = {
            m["clientId"]: m for m in listed if isinstance(m, dict) and isinstance(m.get("clientId"), str)
        }
        me = self.client.client_id
        if again:
            for client_id, member in self.members.items():
                if client_id not in members and client_id != self._me:
                    self._push(ChannelMessage(self.name, MEMBER_REMOVED, member, None, 0))
            for client_id, member in members.items():
                if client_id not in self.members and client_id != me:
                    self._push(ChannelMessage(self.name, MEMBER_ADDED, member, None, 0))
        self.members = members
        self._me = me  # this client's id in the list (it changes with each connection)

    def dispatch(self, frame: dict[str, Any]) -> None:
        event = frame.get("event")
        if not isinstance(event, str):
            return
        data = frame.get("data")
        sender = frame.get("from") if isinstance(frame.get("from"), dict) else None
        offset, epoch = frame.get("offset"), frame.get("epoch")
        if isinstance(offset, int) and isinstance(epoch, str):
            self.position = {"offset": offset, "epoch": epoch}
            if sender is not None and sender.get("clientId") in self._former and not self.receive_own:
                return  # replayed: this client sent it on an earlier connection
        if event in PRESENCE and isinstance(data, dict) and isinstance(data.get("clientId"), str):
            if event == MEMBER_REMOVED:
                self.members.pop(data["clientId"], None)
            else:
                self.members[data["clientId"]] = data
            sender = None
        timestamp = frame.get("timestamp")
        self._push(ChannelMessage(self.name, event, data, sender,
                                  timestamp if isinstance(timestamp, int) else 0))  # fmt: skip

    def _push(self, message: ChannelMessage) -> None:
        if self.closed:
            return
        if self._queue.qsize() >= self.max_pending:
            log.warning("channel reader too slow, leaving", channel=self.name)
            self._end(SlowConsumer(f"more than {self.max_pending} unread messages on {self.name!r}"))
            asyncio.get_running_loop().create_task(self.client.leave_channel(self))
            return
        self._queue.put_nowait(message)

    def _end(self, error: ClientError | None = None) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(_End(error))

    # -- iteration ----------------------------------------------------------------------------
    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> ChannelMessage:
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    async def next(self, timeout: float | None = None) -> ChannelMessage:
        """The next message, waiting at most ``timeout`` seconds (``TimeoutError``)."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.leave()


class JoinCall:
    """What ``Client.join`` returns: await it, or use it as ``async with`` (leaves at the end)."""

    def __init__(self, coro: Awaitable[Channel]) -> None:
        self._coro = coro
        self._channel: Channel | None = None

    def __await__(self):
        return self._coro.__await__()

    async def __aenter__(self) -> Channel:
        self._channel = await self._coro
        return self._channel

    async def __aexit__(self, *exc: object) -> None:
        if self._channel is not None:
            await self._channel.leave()
