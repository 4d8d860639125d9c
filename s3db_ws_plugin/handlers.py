"""What each client frame does: ping, auth, subscribe, unsubscribe, list, get, insert, update,
delete. Each message type is declared once, here: ``@message(type, field=validator, ...)`` on
its handler; the dispatch table (``Handlers.table``) and the parser's known types
(``Handlers.messages``) are built from those declarations. Every handler returns the reply frame
or raises ``ProtocolError`` (or a core error, mapped by ``protocol.client_error``).

For every operation on a resource: the resource must be exposed (``RESOURCE_NOT_FOUND``), the
user must pass its role list (``FORBIDDEN``), then (get, update, delete) the read rule, then
its guard runs. With a read rule, a record the connection may not read is, for get, update and
delete, exactly a missing one (``NOT_FOUND``, before any guard: no guard is handed a record the
caller may not read); without one, a record's existence is revealed only after the guard
allows. Records leave through ``ResourcePolicy.protected.strip`` and the read rule: a record
the connection may not read is left out of a list page. Filters are
bounded (``limits.py``) before they are compiled, and compiled once per frame.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from s3db_auth_drivers import User
from s3db_core import NotFoundError, Resource, ValidationError
from s3db_core.log import get_logger
from s3db_core.query import FilterLimitError, check_limits, compile_filter
from s3db_core.resource import Versioned

from . import hookspecs
from .channels import ChannelFrames, Channels
from .guards import Decision, GuardContext, ResourcePolicy, merge_filter
from .limits import filter_fields, limit_error, page_within
from .protocol import (
    EVENT_KINDS,
    ErrorCode,
    Message,
    ProtocolError,
    Request,
    encode,
    event_kinds,
    flag,
    invalid,
    list_limit,
    message,
    now_ms,
    optional_object,
    optional_text,
    record_version,
    reply,
    required_object,
    required_text,
    sort_order,
    stream_position,
)
from .resume import subscribe_from
from .subscriptions import Subscription

if TYPE_CHECKING:
    from .auth import SessionAuth
    from .connection import Connection
    from .server import Server

Frame = dict[str, Any]
Handler = Callable[["Connection", Request], Awaitable[Frame | None]]
_ALLOWED = Decision(True)  # shared, never mutated
Predicate = Callable[[Any], bool]

log = get_logger("s3db.ws")


def _name(value: str) -> str:
    return value if len(value) <= 100 else value[:100] + "..."


class Handlers(ChannelFrames):
    """The frame handlers of one plugin (the channel frames are inherited from
    ``channels.ChannelFrames``)."""

    def __init__(self, server: Server, session_auth: SessionAuth, channels: Channels) -> None:
        self.server = server
        self.channels = channels
        self.settings = server.settings
        self.session_auth = session_auth
        # Built from the @message declarations below: type -> declaration, type -> handler.
        self.messages: dict[str, Message] = {}
        self.table: dict[str, Handler] = {}
        for klass in reversed(type(self).__mro__):
            for attr in vars(klass).values():
                declared: Message | None = getattr(attr, "message", None)
                if isinstance(declared, Message):
                    self.messages[declared.type] = declared
                    self.table[declared.type] = getattr(self, attr.__name__)

    # -- helpers ------------------------------------------------------------------------------
    def _resource(self, conn: Connection, name: str) -> tuple[ResourcePolicy, Resource]:
        policy = self.server.policies.get(name)
        resource = self.server.db.resources.get(name) if policy is not None else None
        if policy is None or resource is None:
            raise ProtocolError(
                ErrorCode.RESOURCE_NOT_FOUND,
                f"no resource named {_name(name)!r}",
                {"resource": _name(name)},
            )
        if not policy.role_allows(conn.user):
            who = "anonymous users" if conn.user is None else f"role {conn.user.role!r}"
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{who} may not use {name!r}")
        return policy, resource

    def _client_filter(self, policy: ResourcePolicy, filter: dict[str, Any] | None) -> dict[str, Any]:
        """The client's filter, refused if it exceeds the filter limits (``INVALID_MESSAGE``)
        or reads a protected field. Not compiled here: the effective filter is, once."""
        filter = filter or {}
        try:
            check_limits(filter, self.settings.filter_limits)
        except FilterLimitError as exc:
            raise limit_error(exc) from None
        if policy.protected:
            for key in filter_fields(filter):
                if policy.protected.touches(key):
                    raise ProtocolError(
                        ErrorCode.FORBIDDEN,
                        f"filtering on protected field {_name(key)!r} is not allowed",
                        {"field": _name(key)},
                    )
        return filter

    def _merged(
        self, policy: ResourcePolicy, client_filter: dict[str, Any], override: dict[str, Any]
    ) -> tuple[dict[str, Any], Predicate]:
        """The effective filter (the client's, overridden by the guard's keys), bounded like a
        client filter, and the guard's keys compiled alone (the access part)."""
        effective = merge_filter(client_filter, override)
        try:
            check_limits(effective, self.settings.filter_limits)
        except FilterLimitError as exc:
            raise limit_error(exc) from None
        try:
            access = compile_filter(override)
        except ValidationError as exc:  # the guard's own filter is broken: a server bug
            raise RuntimeError(f"{policy.name}: guard returned an invalid filter: {exc}") from exc
        return effective, access

    def _effective(
        self, policy: ResourcePolicy, client_filter: dict[str, Any], override: dict[str, Any] | None
    ) -> tuple[dict[str, Any], Predicate, Predicate | None]:
        """The effective filter, compiled once, and its access part (None when the guard
        imposed no keys)."""
        if not override:
            return client_filter, compile_filter(client_filter), None  # ValidationError: the client's
        effective, access = self._merged(policy, client_filter, override)
        return effective, compile_filter(effective), access

    @staticmethod
    async def _guard(policy: ResourcePolicy, kind: str, user: User | None, arg: Any) -> Decision:
        if kind not in policy.guards:  # no guard: allowed, without a coroutine to run
            return _ALLOWED
        decision = await policy.check(kind, user, arg)
        if not decision.allowed:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{kind} on {policy.name!r} is not allowed")
        return decision

    async def subscription_filter(
        self, policy: ResourcePolicy, user: User | None, client_filter: dict[str, Any]
    ) -> tuple[dict[str, Any], Predicate, Predicate | None]:
        """The effective filter of a subscription to ``policy``'s resource, its compiled
        predicate and its access part (the guard's keys compiled; None when there are none),
        as the ``subscribe`` guard decides now (``FORBIDDEN`` when it refuses). Used by
        ``subscribe`` and by re-checks of open subscriptions (``recheck.py``)."""
        given = dict(client_filter)
        decision = await self._guard(policy, "subscribe", user, given)
        return self._effective(policy, _kept(client_filter, given), decision.filter_override)

    async def list_filter(
        self, conn: Connection, policy: ResourcePolicy, client_filter: dict[str, Any]
    ) -> dict[str, Any]:
        """The effective filter of a ``list`` (or a snapshot, which reads as a ``list`` does):
        the client's, overridden by the ``list`` guard's keys (``FORBIDDEN`` when it refuses)."""
        if "list" not in policy.guards:  # the context is built only for a guard to see
            return client_filter
        given = dict(client_filter)
        ctx = self._guard_ctx(conn, filter=given)
        decision = await self._guard(policy, "list", conn.user, ctx)
        if not decision.filter_override:
            return client_filter
        kept = _kept(client_filter, given)
        return self._merged(policy, kept, decision.filter_override)[0]

    def _guard_ctx(self, conn: Connection, **fields: Any) -> GuardContext:
        return GuardContext(user=conn.user, db=self.server.db, **fields)

    async def custom(self, conn: Connection, req: Request) -> Frame:
        """A custom message type (see ``protocol.parse``): the first ``s3db_ws_message``
        implementation that answers it; ``UNKNOWN_MESSAGE_TYPE`` when none does."""
        answer = await hookspecs.answer(self.server.db.pm, conn, req.fields["message"])
        if answer is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_MESSAGE_TYPE,
                f"unknown message type {req.type[:64]!r}",
                {"type": req.type[:64], "known": sorted(self.messages)},
            )
        if not isinstance(answer, dict) or not isinstance(answer.get("type"), str):
            raise RuntimeError(f"s3db_ws_message answered {req.type[:64]!r} with {type(answer).__name__}, not a frame")
        if req.request_id is not None:
            answer = {**answer, "requestId": req.request_id}
        return answer

    # -- frames -------------------------------------------------------------------------------
    @message("ping", before_auth=True, inline=True)
    async def ping(self, conn: Connection, req: Request) -> Frame:
        return reply("pong", req.request_id, timestamp=now_ms())

    @message("auth", before_auth=True, barrier=True, token=required_text)
    async def auth(self, conn: Connection, req: Request) -> None:
        await self.session_auth.frame(conn, req)

    @message(
        "subscribe",
        barrier=True,
        resource=required_text,
        filter=optional_object,
        events=event_kinds,
        since=stream_position,
        snapshot=flag,
        limit=list_limit,  # the snapshot's page size
    )
    async def subscribe(self, conn: Connection, req: Request) -> Frame | None:
        f = req.fields
        if f["since"] is not None and f["snapshot"]:
            raise invalid("since", "cannot be combined with snapshot")
        name = f["resource"]
        policy, _ = self._resource(conn, name)
        client_filter = self._client_filter(policy, f["filter"])
        effective, predicate, access = await self.subscription_filter(
            policy, conn.user, client_filter
        )
        # A snapshot is a read: it runs the list guard (and its override) as a list would,
        # before the subscription takes effect, so it never shows more than a list.
        listed = await self.list_filter(conn, policy, client_filter) if f["snapshot"] else None
        events = frozenset(f["events"] or EVENT_KINDS) & policy.events
        registry = self.server.registry
        for old in registry.of(conn, name):
            if old.client_filter == client_filter:  # subscribing again replaces
                registry.remove(old)
        limit = self.settings.max_subscriptions
        if len(registry.of(conn)) >= limit:
            raise ProtocolError(
                ErrorCode.FORBIDDEN,
                f"too many subscriptions on this connection (limit {limit})",
                {"limit": limit},
            )
        sub = Subscription(
            conn,
            name,
            client_filter,
            effective,
            events,
            predicate,
            access=access,
            read=policy.readable(conn.user),
        )
        # What it holds counts against its address's and user's budgets (FORBIDDEN over one);
        # the registry releases it when the subscription goes.
        sub.hold = await self.server.holdings.reserve(conn, len(encode(effective)))
        registry.add(sub)
        answer = functools.partial(
            reply,
            "subscribed",
            req.request_id,
            resource=name,
            filter=effective,
            events=[e for e in EVENT_KINDS if e in events],
        )
        position = None
        if f["since"] is None and not f["snapshot"]:
            position = self.server.position_of(name)  # what this process fanned out last
            if position is not None:
                return answer(position=position)
        try:  # replies itself, then sends the replay, the snapshot's stream or what is new
            await subscribe_from(self.server, conn, sub, policy, f, answer, listed)
        except BaseException:
            registry.remove(sub)
            raise
        return None

    @message("unsubscribe", barrier=True, resource=required_text, filter=optional_object)
    async def unsubscribe(self, conn: Connection, req: Request) -> Frame:
        name, filter = req.fields["resource"], req.fields["filter"]
        self._resource(conn, name)
        for sub in self.server.registry.of(conn, name):
            if filter is None or filter in (sub.client_filter, sub.filter):
                self.server.registry.remove(sub)
        return reply("unsubscribed", req.request_id, resource=name)

    @message(
        "list",
        resource=required_text,
        filter=optional_object,
        limit=list_limit,
        cursor=optional_text,
        order=sort_order,
    )
    async def list(self, conn: Connection, req: Request) -> Frame:
        f = req.fields
        policy, resource = self._resource(conn, f["resource"])
        client_filter = self._client_filter(policy, f["filter"])
        effective = await self.list_filter(conn, policy, client_filter)
        order = f["order"] or policy.order
        settings = self.settings
        # The core compiles the effective filter (once) and reads at most the scan budget.
        page = await resource.list(
            filter=effective or None,
            limit=f["limit"],
            cursor=f["cursor"],
            order=order,
            where=policy.readable(conn.user),
            scan_limit=settings.list_scan_limit,
            max_bytes=settings.list_max_bytes,
        )
        data, cursor = page_within(
            page.items, page.cursor, policy, order, settings.list_max_bytes
        )
        return reply("data", req.request_id, resource=policy.name, data=data, cursor=cursor)

    @message("get", resource=required_text, id=required_text)
    async def get(self, conn: Connection, req: Request) -> Frame:
        policy, resource = self._resource(conn, req.fields["resource"])
        id = req.fields["id"]
        read, found = await _load(policy, conn.user, resource, id, consistency="cache")
        record = found[0] if found else None
        if "get" in policy.guards:  # the context is built only for a guard to see
            await self._guard(policy, "get", conn.user, self._guard_ctx(conn, id=id, record=record))
        if found is None:
            raise NotFoundError(f"{policy.name} {_name(id)!r} not found")
        return reply(
            "data",
            req.request_id,
            resource=policy.name,
            data=policy.protected.strip(found[0]),
            version=found.version,
        )

    @message("insert", resource=required_text, data=required_object)
    async def insert(self, conn: Connection, req: Request) -> Frame:
        policy, resource = self._resource(conn, req.fields["resource"])
        data = req.fields["data"]
        if "id" in data and not policy.client_ids:
            raise ValidationError(
                [{"field": "id", "rule": "client_ids", "message": "ids are chosen by the server"}]
            )
        await self._guard(policy, "create", conn.user, data)
        record = await resource.insert(data)
        shown = _shown(policy, policy.readable(conn.user), record)
        return reply("inserted", req.request_id, resource=policy.name, data=shown)

    @message(
        "update",
        resource=required_text,
        id=required_text,
        data=required_object,
        version=record_version,
    )
    async def update(self, conn: Connection, req: Request) -> Frame:
        policy, resource = self._resource(conn, req.fields["resource"])
        id = req.fields["id"]
        read, found = await _load(policy, conn.user, resource, id)
        ctx = self._guard_ctx(conn, id=id, data=req.fields["data"], record=found[0] if found else None)
        await self._guard(policy, "update", conn.user, ctx)
        if found is None:
            raise NotFoundError(f"{policy.name} {_name(id)!r} not found")
        if not isinstance(ctx.data, dict):
            raise RuntimeError(f"{policy.name}: update guard replaced ctx.data with a non-dict")
        seen = found[0]

        async def still_allowed(current: dict[str, Any]) -> None:
            """Run before each write attempt: when another write got in first, the newer record
            must still be readable and pass the update guard (the patch stays the first run's)."""
            if current is seen:
                return
            if read is not None and not read(current):
                raise NotFoundError(f"{policy.name} {_name(id)!r} not found")
            if "update" in policy.guards:
                retry = self._guard_ctx(conn, id=id, data=dict(req.fields["data"]), record=current)
                await self._guard(policy, "update", conn.user, retry)

        # With ``version`` the update is a compare-and-set: CONFLICT when the record is no
        # longer at the version the client read.
        record = await resource.update(
            id,
            ctx.data,
            current=found,
            expected_version=req.fields["version"],
            check=still_allowed,
        )
        return reply("updated", req.request_id, resource=policy.name, data=_shown(policy, read, record))

    @message("delete", resource=required_text, id=required_text)
    async def delete(self, conn: Connection, req: Request) -> Frame:
        policy, resource = self._resource(conn, req.fields["resource"])
        id = req.fields["id"]
        _, found = await _load(policy, conn.user, resource, id)
        ctx = self._guard_ctx(conn, id=id, record=found[0] if found else None)
        await self._guard(policy, "delete", conn.user, ctx)
        if found is None:
            raise NotFoundError(f"{policy.name} {_name(id)!r} not found")
        record = await resource.delete(id, current=found)
        return reply(
            "deleted",
            req.request_id,
            resource=policy.name,
            id=id,
            data=policy.protected.strip(record),
        )


async def _load(
    policy: ResourcePolicy,
    user: User | None,
    resource: Resource,
    id: str,
    consistency: str = "store",
) -> tuple[Predicate | None, Versioned | None]:
    """The read rule bound to ``user`` (once for the frame) and the record ``id`` as the
    guard of ``get``/``update``/``delete`` may see it; run after the role list, before the guard.

    With a read rule, a missing record and one the rule hides are the same answer,
    ``NOT_FOUND``, given here, before any guard: no guard is handed a record the caller may not
    read, and what a guard would say cannot tell the two apart. Without one, a missing record
    reaches the guard as ``None``, and its existence shows only after the guard allows.
    ``consistency="cache"`` (``get``) may answer from the record cache; ``update``/``delete``
    read the store, whose ETag their conditional write needs."""
    read = policy.readable(user)
    found = await resource.get_versioned(id, consistency=consistency)
    if read is not None and (found is None or not read(found[0])):
        raise NotFoundError(f"{policy.name} {_name(id)!r} not found")
    return read, found


def _shown(policy: ResourcePolicy, read: Predicate | None, record: dict[str, Any]) -> dict[str, Any]:
    """What a writer is shown of the record it wrote: the record without protected fields, or
    only its id when the read rule does not let this connection see the result."""
    if read is not None and not read(record):
        return {"id": record["id"]}
    return policy.protected.strip(record)


def _kept(client_filter: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The client's filter without the keys the guard removed from its copy (``given``): a
    guard that translates a key (the seed's ``{documentId}`` into ``{id}``) deletes it and
    returns its replacement. Only deletions count; what a guard imposes is what it returns."""
    kept = {k: v for k, v in client_filter.items() if k in given}
    return client_filter if len(kept) == len(client_filter) else kept
