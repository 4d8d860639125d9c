"""What each client frame does: ping, auth, subscribe, unsubscribe, list, get, insert, update,
delete. Each message type is declared once, here: ``@message(type, field=validator, ...)`` on
its handler; the dispatch table (``Handlers.table``) and the parser's known types
(``Handlers.messages``) are built from those declarations. Every handler returns the reply frame
or raises ``ProtocolError`` (or a core error, mapped by ``protocol.client_error``).

For every operation on a resource: the resource must be exposed (``RESOURCE_NOT_FOUND``), the
user must pass its role list (``FORBIDDEN``), then its guard runs; a record's existence is
revealed only after the guard allows. Records leave through ``ResourcePolicy.protected.strip``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from s3db_auth_drivers import User
from s3db_core import NotFoundError, Resource, ValidationError
from s3db_core.query import compile_filter

from .guards import Decision, GuardContext, ResourcePolicy, merge_filter
from .protocol import (
    EVENT_KINDS,
    ErrorCode,
    Message,
    ProtocolError,
    Request,
    event_kinds,
    flag,
    invalid,
    list_limit,
    message,
    now_ms,
    optional_object,
    optional_text,
    reply,
    required_object,
    required_text,
    sort_order,
    stream_position,
)
from .resume import subscribe_from
from .subscriptions import Subscription

if TYPE_CHECKING:
    from .connection import Connection
    from .plugin import WebSocketPlugin

MAX_SUBSCRIPTIONS_PER_CONNECTION = 1000
Frame = dict[str, Any]
Handler = Callable[["Connection", Request], Awaitable[Frame | None]]
_ALLOWED = Decision(True)  # shared, never mutated


def _name(value: str) -> str:
    return value if len(value) <= 100 else value[:100] + "..."


class Handlers:
    """The frame handlers of one plugin."""

    def __init__(self, plugin: WebSocketPlugin) -> None:
        self.plugin = plugin
        # Built from the @message declarations below: type -> declaration, type -> handler.
        self.messages: dict[str, Message] = {}
        self.table: dict[str, Handler] = {}
        for attr in vars(type(self)).values():
            declared: Message | None = getattr(attr, "message", None)
            if isinstance(declared, Message):
                self.messages[declared.type] = declared
                self.table[declared.type] = getattr(self, attr.__name__)

    # -- helpers ------------------------------------------------------------------------------
    def _resource(self, conn: Connection, name: str) -> tuple[ResourcePolicy, Resource]:
        policy = self.plugin.policies.get(name)
        resource = self.plugin.db.resources.get(name) if policy is not None else None
        if policy is None or resource is None:
            raise ProtocolError(
                ErrorCode.RESOURCE_NOT_FOUND, f"no resource named {_name(name)!r}", {"resource": name}
            )
        if not policy.role_allows(conn.user):
            who = "anonymous users" if conn.user is None else f"role {conn.user.role!r}"
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{who} may not use {name!r}")
        return policy, resource

    @staticmethod
    def _client_filter(policy: ResourcePolicy, filter: dict[str, Any] | None) -> dict[str, Any]:
        """The client's filter, refused if it reads a protected field or does not compile."""
        filter = filter or {}
        for key in filter:
            if policy.protected.touches(key):
                raise ProtocolError(
                    ErrorCode.FORBIDDEN,
                    f"filtering on protected field {_name(key)!r} is not allowed",
                    {"field": key},
                )
        compile_filter(filter)  # ValidationError names the bad key
        return filter

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
    ) -> tuple[dict[str, Any], Callable[[Any], bool]]:
        """The effective filter of a subscription to ``policy``'s resource and its compiled
        predicate, as the ``subscribe`` guard decides now (``FORBIDDEN`` when it refuses).
        Used by ``subscribe`` and by re-checks of open subscriptions (``recheck.py``)."""
        decision = await self._guard(policy, "subscribe", user, dict(client_filter))
        effective = merge_filter(client_filter, decision.filter_override)
        return effective, self._compile_effective(policy, effective)

    @staticmethod
    def _compile_effective(policy: ResourcePolicy, filter: dict[str, Any]) -> Callable[[Any], bool]:
        try:
            return compile_filter(filter)
        except ValidationError as exc:  # the guard's own filter is broken: a server bug
            raise RuntimeError(f"{policy.name}: guard returned an invalid filter: {exc}") from exc

    def _guard_ctx(self, conn: Connection, **fields: Any) -> GuardContext:
        return GuardContext(user=conn.user, db=self.plugin.db, **fields)

    # -- frames -------------------------------------------------------------------------------
    @message("ping", before_auth=True)
    async def ping(self, conn: Connection, req: Request) -> Frame:
        return reply("pong", req.request_id, timestamp=now_ms())

    @message("auth", before_auth=True, token=required_text)
    async def auth(self, conn: Connection, req: Request) -> None:
        await self.plugin.session_auth.frame(conn, req)

    @message(
        "subscribe",
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
        effective, predicate = await self.subscription_filter(policy, conn.user, client_filter)
        events = frozenset(f["events"] or EVENT_KINDS) & policy.events
        registry = self.plugin.registry
        for old in registry.of(conn, name):
            if old.client_filter == client_filter:  # subscribing again replaces
                registry.remove(old)
        if len(registry.of(conn)) >= MAX_SUBSCRIPTIONS_PER_CONNECTION:
            raise ProtocolError(
                ErrorCode.FORBIDDEN,
                f"too many subscriptions on this connection (limit {MAX_SUBSCRIPTIONS_PER_CONNECTION})",
                {"limit": MAX_SUBSCRIPTIONS_PER_CONNECTION},
            )
        sub = Subscription(conn, name, client_filter, effective, events, predicate)
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
            position = self.plugin.position_of(name)  # what this process fanned out last
            if position is not None:
                return answer(position=position)
        try:  # replies itself, then sends the replay, the snapshot's stream or what is new
            await subscribe_from(self.plugin, conn, sub, policy, f, answer)
        except BaseException:
            registry.remove(sub)
            raise
        return None

    @message("unsubscribe", resource=required_text, filter=optional_object)
    async def unsubscribe(self, conn: Connection, req: Request) -> Frame:
        name, filter = req.fields["resource"], req.fields["filter"]
        self._resource(conn, name)
        for sub in self.plugin.registry.of(conn, name):
            if filter is None or filter in (sub.client_filter, sub.filter):
                self.plugin.registry.remove(sub)
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
        effective = client_filter  # compiled by _client_filter already
        if "list" in policy.guards:  # the context is built only for a guard to see
            ctx = self._guard_ctx(conn, filter=dict(client_filter))
            decision = await self._guard(policy, "list", conn.user, ctx)
            if decision.filter_override:
                effective = merge_filter(client_filter, decision.filter_override)
                self._compile_effective(policy, effective)
        order = f["order"] or policy.order
        page = await resource.list(
            filter=effective or None, limit=f["limit"], cursor=f["cursor"], order=order
        )
        items = page.items
        if policy.protected:  # strip() returns each record itself when nothing is protected
            strip = policy.protected.strip
            items = [strip(record) for record in items]
        return reply("data", req.request_id, resource=policy.name, data=items, cursor=page.cursor)

    @message("get", resource=required_text, id=required_text)
    async def get(self, conn: Connection, req: Request) -> Frame:
        policy, resource = self._resource(conn, req.fields["resource"])
        id = req.fields["id"]
        found = await resource.get_versioned(id)
        record = found[0] if found else None
        if "get" in policy.guards:  # the context is built only for a guard to see
            await self._guard(policy, "get", conn.user, self._guard_ctx(conn, id=id, record=record))
        if record is None:
            raise NotFoundError(f"{policy.name} {_name(id)!r} not found")
        return reply("data", req.request_id, resource=policy.name, data=policy.protected.strip(record))

    @message("insert", resource=required_text, data=required_object)
    async def insert(self, conn: Connection, req: Request) -> Frame:
        policy, resource = self._resource(conn, req.fields["resource"])
        data = req.fields["data"]
        await self._guard(policy, "create", conn.user, data)
        record = await resource.insert(data)
        return reply(
            "inserted", req.request_id, resource=policy.name, data=policy.protected.strip(record)
        )

    @message("update", resource=required_text, id=required_text, data=required_object)
    async def update(self, conn: Connection, req: Request) -> Frame:
        policy, resource = self._resource(conn, req.fields["resource"])
        id = req.fields["id"]
        found = await resource.get_versioned(id)
        ctx = self._guard_ctx(conn, id=id, data=req.fields["data"], record=found[0] if found else None)
        await self._guard(policy, "update", conn.user, ctx)
        if found is None:
            raise NotFoundError(f"{policy.name} {_name(id)!r} not found")
        if not isinstance(ctx.data, dict):
            raise RuntimeError(f"{policy.name}: update guard replaced ctx.data with a non-dict")
        record = await resource.update(id, ctx.data, current=found)
        return reply(
            "updated", req.request_id, resource=policy.name, data=policy.protected.strip(record)
        )

    @message("delete", resource=required_text, id=required_text)
    async def delete(self, conn: Connection, req: Request) -> Frame:
        policy, resource = self._resource(conn, req.fields["resource"])
        id = req.fields["id"]
        found = await resource.get_versioned(id)
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

