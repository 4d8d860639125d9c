"""Positions in the fan-out: stale versions, resume (``subscribe {since}``) and snapshot-then-
stream (``subscribe {snapshot: true}``).

Every change a broker hands the plugin carries its stream position (``offset`` within an
``epoch``) and the record's ``version``. Three things follow:

- **Stale versions are dropped once, for everyone.** Two writer processes racing on one record
  may publish out of order (version 5, then version 4). ``VersionGate`` remembers, per resource
  and record (a bounded LRU), the newest version this process fanned out, and drops an older
  one before any subscriber is looked at: one dict operation per change, never per subscriber.
- **Resume.** ``subscribe {since}`` replays the **net changes** of the broker's history after
  that position (per record its latest state or its removal, never a past state; see
  ``Resumer.replay_frames``) through the subscription's own delivery rule, at most
  ``replay_max_bytes`` of them (more answers ``recovered: false``), then continues live. While
  the replay is read, live frames for that connection are *held* (not sent); then the replayed
  and held frames go out merged in offset order, each change once. A process's broker reader may lag behind the broker, so a
  replayed change can still arrive live afterwards: a short-lived *guard* drops it. When the
  epoch differs or the position left history the reply says ``recovered: false`` and the
  client reloads.
- **Snapshot.** ``subscribe {snapshot: true}`` reads the stream position first, then the first
  page of matching records exactly as a ``list`` reads (its guard's filter, the read rule, the
  scan and byte budgets) and through the subscription's filter, holds live frames meanwhile,
  and flushes them minus what the page already shows; its guard keeps doing so for changes
  published after the listing saw them.

Holds and guards are the only per-connection state; they exist only while a connection
subscribes (a guard: a few seconds at most), and the live path looks them up (one dict lookup
per receiver) only while some exist.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from s3db_core import Change, Position
from s3db_core.log import get_logger

from .connection import text_frame
from .limits import page_within
from .protocol import CloseCode, encode
from .subscriptions import Delivery, delivers

if TYPE_CHECKING:
    from .connection import Connection
    from .guards import ResourcePolicy
    from .server import Server
    from .subscriptions import Subscription, SubscriptionRegistry

log = get_logger("s3db.ws")

# Records whose newest fanned-out version a process remembers (LRU over all resources).
VERSION_GATE_SIZE = 100_000
# How long, at most, live changes are checked against what a replay or snapshot already sent
# (a process's broker reader is normally milliseconds behind the broker).
GUARD_TTL = 5.0
# Broker reads (positions, history) subscribes may have in flight at once per process.
BROKER_READS = 8
# Changes of history remembered before ``since`` to seed the stale-version check of a replay.
REPLAY_SEED = 256
# Bytes of events one replay may send (``replay_max_bytes``, at most half the send queue); a
# replay that needs more answers ``recovered: false`` and the client reloads with ``list``.
DEFAULT_REPLAY_MAX_BYTES = 512 << 10


def rank(event: str, version: int) -> int:
    """Order of a record's changes: insert/update ``v`` < delete of ``v`` < update ``v + 1``."""
    return version * 2 + (event == "delete")


class VersionGate:
    """The newest (version, deleted) fanned out per record; drops what is older or the same."""

    def __init__(self, capacity: int = VERSION_GATE_SIZE) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, Any], int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, change: Change) -> bool:
        """True when ``change`` is newer than anything fanned out for its record (and note it)."""
        return admit(self._seen, change, self.capacity)


def admit(seen: OrderedDict[tuple[str, Any], int], change: Change, capacity: int) -> bool:
    version = change.version
    if not version:  # a change built without a version (tests, old writers): no ordering
        return True
    record_id = change.record.get("id") if isinstance(change.record, dict) else None
    if record_id is None or not isinstance(record_id, str | int):
        return True
    key = (change.resource, record_id)
    new = rank(change.event, version)
    old = seen.get(key)
    if old is not None:
        # An insert after a delete is the id's new life, not a stale change.
        if new <= old and not (change.event == "insert" and old & 1):
            return False
        seen.move_to_end(key)
    seen[key] = new
    if len(seen) > capacity:
        seen.popitem(last=False)
    return True


@dataclass(slots=True)
class Held:
    """A live frame held for a connection while one of its subscriptions replays."""

    change: Change
    payload: bytes


class Hold:
    """Frames held for one connection; beyond ``limit`` bytes the connection is closed with 4408
    when flushed (exactly as a send queue overflow), never grown without bound."""

    __slots__ = ("entries", "size", "limit")

    def __init__(self, limit: int) -> None:
        self.entries: list[Held] = []
        self.size = 0
        self.limit = limit

    def add(self, change: Change, payload: bytes) -> None:
        self.entries.append(Held(change, payload))
        self.size += len(payload)


class Positions:
    """What this process has fanned out per resource: the last offset, within its epoch."""

    def __init__(self) -> None:
        self.fanned: dict[str, tuple[str, int]] = {}

    def advance(self, change: Change) -> None:
        """Called for every change the plugin receives, stale or not, in stream order."""
        if change.offset is not None and change.epoch is not None:
            self.fanned[change.resource] = (change.epoch, change.offset)

    def passed(self, resource: str, epoch: str, offset: int) -> bool:
        """Whether the live stream of ``resource`` went past ``offset`` (or left ``epoch``):
        a later change is being or was fanned out, so ``offset`` itself was."""
        fanned = self.fanned.get(resource)
        if fanned is None:
            return False
        return fanned[0] != epoch or fanned[1] > offset


class ReplayGuard:
    """After a replay (or a subscribe from the broker's position), the live changes up to
    ``offset`` that this process fans out late (its broker reader lags behind the broker)
    are not sent again. Ends when the live stream passed ``offset`` or after ``ttl``."""

    __slots__ = ("sub", "resource", "epoch", "offset", "positions", "expires")

    def __init__(
        self, sub: Subscription, epoch: str, offset: int, positions: Positions, ttl: float
    ) -> None:
        self.sub = sub
        self.resource = sub.resource
        self.epoch = epoch
        self.offset = offset
        self.positions = positions
        self.expires = asyncio.get_running_loop().time() + ttl

    @property
    def expired(self) -> bool:
        return (
            self.positions.passed(self.resource, self.epoch, self.offset)
            or asyncio.get_running_loop().time() > self.expires
        )

    def covers(self, change: Change) -> bool:
        return (
            change.resource == self.resource
            and change.epoch == self.epoch
            and change.offset is not None
            and change.offset <= self.offset
        )


class Resumer:
    """The plugin's resume machinery: version gate, positions, holds, replay and snapshot."""

    def __init__(
        self,
        registry: SubscriptionRegistry,
        max_hold_bytes: int,
        replay_max_bytes: int = DEFAULT_REPLAY_MAX_BYTES,
    ) -> None:
        self.registry = registry
        self._release = self.release  # one bound method for every connection's clean-ups
        self.gate = VersionGate()
        self.positions = Positions()
        # Connections whose live frames are held while one of their subscriptions catches up.
        self.holds: dict[Connection, Hold] = {}
        # Connections whose live frames are checked against a recent replay or snapshot.
        self.guards: dict[Connection, list[ReplayGuard | SnapshotGuard]] = {}
        self.max_hold_bytes = max_hold_bytes
        # Bytes of events one replay may send; beyond, the reply says ``recovered: false``.
        self.replay_max_bytes = replay_max_bytes
        self.guard_ttl = GUARD_TTL
        # Broker reads made for subscribes: at most BROKER_READS at once (the broker's client
        # has a bounded pool that the writes need too), positions coalesced per resource.
        self.broker_reads = asyncio.Semaphore(BROKER_READS)
        self.position_reads: dict[str, _Coalesced] = {}

    def hold(self, conn: Connection) -> Hold:
        hold = self.holds[conn] = Hold(self.max_hold_bytes)
        conn.on_close(self._release)
        return hold

    def release(self, conn: Connection) -> None:
        """Forget ``conn``'s holds and guards (run by the connection when it closes)."""
        self.holds.pop(conn, None)
        self.guards.pop(conn, None)

    def guard(self, conn: Connection, guard: ReplayGuard | SnapshotGuard) -> None:
        if not guard.expired:
            self.guards.setdefault(conn, []).append(guard)
            conn.on_close(self._release)

    def guarded(self, conn: Connection, change: Change, policy: ResourcePolicy) -> bool:
        """Whether a live ``change`` for ``conn`` is one a recent replay or snapshot of one of
        its subscriptions already accounted for (and no other subscription receives it)."""
        guards = self.guards[conn]
        live = [g for g in guards if not g.expired and g.sub in self.registry.of(conn, g.resource)]
        if len(live) != len(guards):
            if live:
                self.guards[conn] = guards = live
            else:
                del self.guards[conn]
                return False
        covering = [g.sub for g in guards if g.covers(change)]
        if not covering:
            return False
        others = [s for s in self.registry.of(conn, change.resource) if s not in covering]
        return not any(delivers(other, change, policy) for other in others)

    def flush(
        self,
        conn: Connection,
        sub: Subscription,
        policy: ResourcePolicy,
        covered: Callable[[Change], bool],
        replayed: Iterable[tuple[int, bytes]] = (),
    ) -> int:
        """Send the replayed frames and what was held for ``conn``: ``sub``'s resource in offset
        order (replayed and held merged, each change once), minus the held changes ``covered``
        says the replay or snapshot already accounted for, unless another subscription of the
        connection receives them. Other resources go out in arrival order. Returns the number
        of frames sent."""
        hold = self.holds.pop(conn, None)
        if hold is None:
            hold = Hold(self.max_hold_bytes)
        if hold.size > hold.limit:
            conn.close(CloseCode.SLOW_CONSUMER, "slow consumer: too many events while resuming")
            return 0
        resource = sub.resource
        merged = list(replayed)
        sent_offsets = {offset for offset, _ in merged}
        others = [s for s in self.registry.of(conn, resource) if s is not sub]
        frames: list[bytes] = []
        for held in hold.entries:
            change = held.change
            if change.resource != resource or change.offset is None:
                frames.append(held.payload)
                continue
            if change.offset in sent_offsets:
                continue
            if covered(change) and not any(delivers(o, change, policy) for o in others):
                continue
            merged.append((change.offset, held.payload))
        merged.sort(key=lambda item: item[0])
        frames.extend(payload for _, payload in merged)
        for payload in frames:
            conn.send(payload, text_frame(payload))
        return len(frames)

    def replay_frames(
        self,
        sub: Subscription,
        policy: ResourcePolicy,
        changes: Iterable[Change],
        after: int,
        encode: Callable[[dict[str, Any]], bytes],
        max_bytes: int,
    ) -> tuple[list[tuple[int, bytes]] | None, int | None]:
        """The frames ``sub`` gets from ``changes`` (in stream order) past offset ``after``, with
        their offsets, and the offset of the last change looked at; None instead of the frames
        when they would exceed ``max_bytes`` (the client reloads instead).

        A replay carries **net changes**: per record changed after ``after``, only its latest
        state (``insert`` if it did not exist at ``after``, else ``update``) or its removal
        (``delete``, or ``leave`` when it left what the connection may see, with ``{id}``
        only), in the order of each record's latest change, through the live delivery rule
        applied to the record as it was at ``after`` and as it is now. No intermediate state
        (a deleted record's content, the text before an edit) is ever replayed. Changes at or
        before ``after`` only seed the stale-version check (a record the client saw at version
        5 must not go back to 4)."""
        seen: OrderedDict[tuple[str, Any], int] = OrderedDict()
        # record id -> (existed at ``after``, its state then, its latest change); re-inserted on
        # every change so the dict's order is the order of each record's latest change.
        net: dict[Any, tuple[bool, dict[str, Any] | None, Change]] = {}
        last: int | None = None
        for change in changes:
            fresh = admit(seen, change, VERSION_GATE_SIZE)
            if change.offset is None or change.offset <= after:
                continue
            last = change.offset
            record_id = change.record.get("id") if isinstance(change.record, dict) else None
            if not fresh or record_id is None or not isinstance(record_id, str | int):
                continue
            first = net.pop(record_id, None)
            if first is None:
                existed = change.event != "insert"
                net[record_id] = (existed, change.previous if existed else None, change)
            else:
                net[record_id] = (first[0], first[1], change)
        frames: list[tuple[int, bytes]] = []
        size = 0
        for existed, before, latest in net.values():
            frame = net_frame(sub, policy, existed, before, latest)
            if frame is None:
                continue
            payload = encode(frame)
            size += len(payload)
            if size > max_bytes:
                return None, last
            frames.append((latest.offset or 0, payload))
        return frames, last


def net_frame(
    sub: Subscription,
    policy: ResourcePolicy,
    existed: bool,
    before: dict[str, Any] | None,
    latest: Change,
) -> dict[str, Any] | None:
    """The frame of one record's net change for ``sub`` (None: nothing to send): the record
    was ``before`` at the resume position (``existed``) and ``latest`` is its latest change."""
    if latest.event == "delete":
        if not existed:
            return None  # born and gone after the position: the client never held it
        event, after = "delete", None
    else:
        event, after = ("update" if existed else "insert"), latest.record
    if event not in policy.events or event not in sub.events:
        return None
    if policy.requires_user and not policy.role_allows(sub.connection.user):
        return None
    try:
        outcome = sub.delivery(event, after, before)
    except Exception:
        log.exception("subscription check failed", resource=sub.resource)
        return None
    if outcome == Delivery.NOTHING:
        return None
    record_id = latest.record.get("id")
    leave = outcome == Delivery.LEAVE
    return {
        "type": "event",
        "resource": latest.resource,
        "event": "leave" if leave else event,
        "data": {"id": record_id} if leave or after is None else policy.protected.strip(after),
        "timestamp": latest.timestamp,
        "version": latest.version,
        "offset": latest.offset,
        "epoch": latest.epoch,
    }


class SnapshotGuard:
    """What a snapshot listed, kept while the stream catches up with it.

    A store write is durable before its change is published, so a listing may show a record
    whose change reaches the stream after the position read with it, even after the live
    stream seemed to catch up. Per listed record, the changes after the snapshot's position are
    a chain: older states, then the one the listing showed, then newer ones. The listing gives
    each record's version, so the guard compares versions: it drops states older than the
    listed one and the listed one itself, and lets the first newer one (a higher version, or
    the delete of the listed version) and all after it through. A version restarts at 1 when a
    record is deleted and inserted again, so a record re-inserted between the position and the
    listing may repeat states it showed (it still ends at the right one). A record listed
    without a version is compared by content (``record`` equal to the listed one, then
    ``previous`` equal to it). The guard ends when every listed record is resolved or after
    ``ttl`` seconds (a record the listing showed unchanged since before the position has no
    marker to wait for)."""

    __slots__ = ("sub", "resource", "offset", "epoch", "pending", "expires")

    def __init__(
        self,
        sub: Subscription,
        offset: int,
        epoch: str,
        records: Iterable[Any],
        ttl: float,
        versions: dict[str, int] | None = None,
    ) -> None:
        self.sub = sub
        self.resource = sub.resource
        self.offset = offset
        self.epoch = epoch
        known = versions or {}
        # id -> the listed version, or the listed record where no version is known
        self.pending: dict[Any, int | dict[str, Any]] = {
            r["id"]: known.get(r["id"]) or r
            for r in records
            if isinstance(r, dict) and r.get("id") is not None
        }
        self.expires = asyncio.get_running_loop().time() + ttl

    @property
    def expired(self) -> bool:
        return not self.pending or asyncio.get_running_loop().time() > self.expires

    def covers(self, change: Change) -> bool:
        """Whether the snapshot already shows ``change`` (noting what it learns)."""
        if change.resource != self.resource or change.epoch != self.epoch:
            return False
        if change.offset is not None and change.offset <= self.offset:
            return True
        record = change.record if isinstance(change.record, dict) else {}
        listed = self.pending.get(record.get("id"))
        if listed is None:
            return False
        if isinstance(listed, int) and change.version > 0:
            if change.version < listed:
                return True  # a state older than the listed one
            del self.pending[record.get("id")]
            # The listed state itself; else the first state after it (its delete, or newer).
            return change.version == listed and change.event != "delete"
        if change.event != "delete" and record == listed:
            del self.pending[record.get("id")]  # the listed state itself
            return True
        if change.previous == listed:
            del self.pending[record.get("id")]  # the first change after the listed state
            return False
        return True  # a state older than the listed one


# -- subscribe {since} / {snapshot} -------------------------------------------------------------
async def current_position(server: Server, resource: str) -> Position | None:
    """The broker's latest position of ``resource`` (None for a broker without positions),
    read after this call began. Concurrent subscribes share reads: one runs at a time per
    resource and the callers that arrive meanwhile share the next one (a thousand clients
    resubscribing at once cost two reads, not a thousand connections to the broker)."""
    if getattr(server.db.broker, "position", None) is None:
        return None
    resumer = server.resumer
    state = resumer.position_reads.setdefault(resource, _Coalesced())
    if state.running is None:
        state.running = asyncio.ensure_future(_position_round(server, resource, state))
        return await asyncio.shield(state.running)
    if state.waiting is None:  # one is running, begun before us: share the next
        state.waiting = asyncio.get_running_loop().create_future()
    return await asyncio.shield(state.waiting)


class _Coalesced:
    __slots__ = ("running", "waiting")

    def __init__(self) -> None:
        self.running: asyncio.Future[Position] | None = None
        self.waiting: asyncio.Future[Position] | None = None


async def _position_round(server: Server, resource: str, state: _Coalesced) -> Position:
    try:
        async with server.resumer.broker_reads:
            position: Position = await server.db.broker.position(resource)
            return position
    finally:
        waiting, state.waiting = state.waiting, None
        if waiting is None:
            state.running = None
        else:
            state.running = asyncio.ensure_future(_position_round(server, resource, state))
            state.running.add_done_callback(lambda task: _settle(waiting, task))


def _settle(future: asyncio.Future[Position], task: asyncio.Future[Position]) -> None:
    if future.done():
        return
    if task.cancelled():
        future.cancel()
    elif task.exception() is not None:
        future.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        future.set_result(task.result())


async def subscribe_from(
    server: Server,
    conn: Connection,
    sub: Subscription,
    policy: ResourcePolicy,
    fields: dict[str, Any],
    reply: Callable[..., dict[str, Any]],
    listed: dict[str, Any] | None = None,
) -> None:
    """Answer a ``subscribe`` with ``since`` or ``snapshot`` (``sub`` is registered already),
    replay or list, then flush the live frames held meanwhile. ``reply(**fields)`` builds the
    ``subscribed`` frame; this sends it itself, before the replayed events. ``listed`` is the
    effective filter a ``list`` by the same connection would use (the snapshot's records pass
    it as well as the subscription's own filter)."""
    resumer = server.resumer
    resumer.hold(conn)  # before any await: every live frame from now on is held
    name = sub.resource
    covered: Callable[[Change], bool] = _nothing
    replayed: list[tuple[int, bytes]] = []
    try:
        current = await current_position(server, name)
        if fields.get("snapshot"):
            covered = await _snapshot(
                server, conn, sub, policy, fields, reply, current, listed or {}
            )
        elif fields.get("since") is None:  # from now: after the broker's latest position
            server.send(conn, reply(position=_dict(current)))
            if current is not None:
                guard = ReplayGuard(
                    sub, current.epoch, current.offset, resumer.positions, resumer.guard_ttl
                )
                resumer.guard(conn, guard)
                covered = guard.covers
        else:
            covered, replayed = await _replay(
                server, conn, sub, policy, fields["since"], reply, current
            )
    finally:
        sent = resumer.flush(conn, sub, policy, covered, replayed)
        server.metrics.frames_out.inc(sent)


def _nothing(change: Change) -> bool:
    return False


async def _replay(
    server: Server,
    conn: Connection,
    sub: Subscription,
    policy: ResourcePolicy,
    since: dict[str, Any],
    reply: Callable[..., dict[str, Any]],
    current: Any | None,
) -> tuple[Callable[[Change], bool], list[tuple[int, bytes]]]:
    resumer = server.resumer
    name = sub.resource
    offset, epoch = since["offset"], since["epoch"]
    changes = None
    frames: list[tuple[int, bytes]] = []
    if current is not None and current.epoch == epoch and offset <= current.offset:
        history = server.db.broker.history
        seed = max(0, offset - REPLAY_SEED)
        async with resumer.broker_reads:  # bounded: a reconnect storm queues, never fails
            changes = await history(name, Position(seed, epoch))
            if changes is None and seed < offset:  # the seed left history, not the position
                changes = await history(name, Position(offset, epoch))
    last: int | None = None
    if changes is not None:
        # More than the replay budget: as if history no longer reached back (the client reloads).
        replayed, last = resumer.replay_frames(
            sub, policy, changes, offset, encode, resumer.replay_max_bytes
        )
        del changes
        if replayed is None:
            log.info("replay over its byte budget", resource=name, max_bytes=resumer.replay_max_bytes)
        frames = replayed or []
        changes_ok = replayed is not None
    else:
        changes_ok = False
    if not changes_ok:
        server.send(conn, reply(recovered=False, position=_dict(current)))
        if current is None:
            return _nothing, []
        cut, cut_epoch = current.offset, current.epoch
    else:
        server.send(conn, reply(recovered=True, position=Position(offset, epoch).to_dict()))
        cut, cut_epoch = (last if last is not None else offset), epoch
    guard = ReplayGuard(sub, cut_epoch, cut, resumer.positions, resumer.guard_ttl)
    resumer.guard(conn, guard)  # the replayed changes this process fans out late
    return guard.covers, frames


async def _snapshot(
    server: Server,
    conn: Connection,
    sub: Subscription,
    policy: ResourcePolicy,
    fields: dict[str, Any],
    reply: Callable[..., dict[str, Any]],
    current: Any | None,
    listed: dict[str, Any],
) -> Callable[[Change], bool]:
    resumer = server.resumer
    name = sub.resource
    resource = server.db.resources[name]
    order = policy.order
    # As ``list`` reads (its guard's filter, the read rule, the scan budget, the byte budget),
    # and through the subscription's own filter (the subscribe guard's override) as well.
    where = sub.read
    query = sub.filter
    if listed != sub.client_filter:  # the list guard imposed keys: records pass both filters
        query, where = listed, _all(sub.predicate, sub.read)
    page = await resource.list(
        filter=query or None,
        limit=fields["limit"],
        order=order,
        where=where,
        scan_limit=server.settings.list_scan_limit,
        max_bytes=server.settings.list_max_bytes,
    )
    data, cursor = page_within(page.items, page.cursor, policy, order, server.settings.list_max_bytes)
    records = page.items
    if cursor != page.cursor:  # cut by the byte budget: the guard knows only what was sent
        sent = orjson.loads(orjson.dumps(data))  # the page's fragments, as the client reads them
        shown = {r.get("id") for r in sent if isinstance(r, dict)}
        records = [r for r in records if r.get("id") in shown]
    server.send(conn, reply(data=data, cursor=cursor, position=_dict(current)))
    if current is None:
        return _nothing
    guard = SnapshotGuard(
        sub, current.offset, current.epoch, records, resumer.guard_ttl, page.versions
    )
    resumer.guard(conn, guard)  # the live frames after the flush go through it too
    return guard.covers


def _all(
    first: Callable[[Any], bool], second: Callable[[Any], bool] | None
) -> Callable[[Any], bool]:
    if second is None:
        return first
    return lambda record: bool(first(record)) and bool(second(record))


def _dict(position: Position | None) -> dict[str, Any] | None:
    return None if position is None else position.to_dict()
