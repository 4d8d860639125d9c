"""Re-checking open subscriptions after who-may-see-what changed.

A ``subscribe`` guard runs once, when the client subscribes. When the facts it decided on change
(a member leaves a private room, a collaborator is removed from a document, a user's role is
lowered), the app calls ``plugin.recheck(resource, where=..., user_id=...)``: every matching open
subscription goes through its resource's role list and ``subscribe`` guard again, with the
connection's user and the filter the client asked for.

- Allowed with the same effective filter: nothing changes.
- Allowed with another effective filter (the guard narrows differently now): the subscription is
  re-indexed under the new filter, silently.
- Refused, or the guard raises (fail closed): the subscription is removed and the connection
  gets ``error FORBIDDEN`` with ``details {resource, filter, revoked: true}``, ``filter`` being
  the filter the client subscribed with, so its client can end that subscription.

A token refresh (``auth`` frame on an open connection) re-checks that connection's subscriptions
the same way, so a token with a lower role or other claims stops streams it no longer allows.

Events committed between the change and the end of the re-check may still reach a subscription
that is about to be revoked; apps that need a hard cut write the membership change first and
await ``plugin.recheck(...)`` before writing anything the removed user must not see.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from s3db_core import Change, ForbiddenError, NotFoundError, hookimpl
from s3db_core.log import get_logger

from .protocol import ErrorCode, ProtocolError
from .subscriptions import Subscription

if TYPE_CHECKING:
    from s3db_auth_drivers import User

    from .connection import Connection
    from .guards import ResourcePolicy
    from .plugin import WebSocketPlugin
    from .server import Server

    # The subscribe decision: (policy, user, client filter) -> (effective filter, predicate,
    # access part), raising when refused.
    Decide = Callable[
        [ResourcePolicy, User | None, dict[str, Any]],
        Awaitable[tuple[dict[str, Any], Callable[[Any], bool], Callable[[Any], bool] | None]],
    ]

log = get_logger("s3db.ws")


def _selected(sub: Subscription, where: Mapping[str, Any] | None) -> bool:
    """Whether the subscription's client or effective filter pins every ``where`` key to its
    value (``where={"roomId": r}`` picks the subscriptions to room ``r``)."""
    if not where:
        return True
    return all(
        sub.filter.get(key, sub.client_filter.get(key)) == value for key, value in where.items()
    )


async def recheck_subscriptions(
    server: Server,
    decide: Decide,
    resource: str | None = None,
    *,
    where: Mapping[str, Any] | None = None,
    user_id: Any = None,
    connections: Iterable[Connection] | None = None,
) -> int:
    """Re-run role and ``subscribe`` checks on the selected subscriptions; returns how many were
    revoked. ``resource`` None means every resource; ``user_id`` limits it to that user's
    connections, ``connections`` to those. ``decide`` is the decision ``subscribe`` makes
    (``Handlers.subscription_filter``)."""
    revoked = 0
    for conn in list(server.connections if connections is None else connections):
        if conn.closing or (user_id is not None and getattr(conn.user, "id", None) != user_id):
            continue
        for sub in server.registry.of(conn, resource):
            if not _selected(sub, where):
                continue
            allowed = await _still_allowed(server, decide, sub)
            if sub not in server.registry:  # unsubscribed while the guard ran
                continue
            if allowed is None:
                _revoke(server, sub)
                revoked += 1
                continue
            # The read rule follows the connection's user (a refreshed token's claims).
            server.registry.set_read(sub, server.policies[sub.resource].readable(conn.user))
            if allowed[0] != sub.filter:
                server.registry.reindex(sub, *allowed)
    if revoked:
        log.info("subscriptions revoked", resource=resource, count=revoked)
    return revoked


async def _still_allowed(
    server: Server, decide: Decide, sub: Subscription
) -> tuple[dict[str, Any], Callable[[Any], bool], Callable[[Any], bool] | None] | None:
    """The subscription's effective filter and predicate now (the same decision ``subscribe``
    makes), or None when it is no longer allowed."""
    conn = sub.connection
    policy = server.policies.get(sub.resource)
    if policy is None or not policy.role_allows(conn.user):
        return None
    try:
        return await decide(policy, conn.user, sub.client_filter)
    except (ProtocolError, ForbiddenError, NotFoundError):  # refused
        return None
    except Exception:  # fail closed: a guard that cannot decide does not keep the stream open
        log.exception("subscribe guard failed during a re-check", resource=sub.resource)
        return None


def _revoke(server: Server, sub: Subscription) -> None:
    server.registry.remove(sub)
    error = ProtocolError(
        ErrorCode.FORBIDDEN,
        f"subscription to {sub.resource!r} revoked: no longer allowed",
        {"resource": sub.resource, "filter": sub.client_filter, "revoked": True},
    )
    server.send_error(sub.connection, error)


class RecheckOnAccessChange:
    """A plugin that revokes open subscriptions when the record granting access to them changes.

    ``dependents`` maps each resource whose subscriptions hang on a ``resource`` record to the
    filter field naming that record: ``{"chat_messages": "roomId"}`` re-checks the message
    subscriptions of a room when the room's ``fields`` (e.g. its members) change or it is
    deleted. The hook awaits the re-check, so the write that changed access returns only once
    the removed users' subscriptions are gone.
    """

    def __init__(
        self,
        plugin: WebSocketPlugin,
        resource: str,
        fields: tuple[str, ...],
        dependents: Mapping[str, str],
    ) -> None:
        self.plugin = plugin
        self.resource = resource
        self.fields = fields
        self.dependents = dependents

    @hookimpl
    async def s3db_change(self, change: Change) -> None:
        if change.resource != self.resource or change.event == "insert":
            return
        before, after = change.previous or {}, change.record
        if change.event == "update" and all(before.get(f) == after.get(f) for f in self.fields):
            return
        for resource, field in self.dependents.items():
            await self.plugin.recheck(resource, where={field: after["id"]})
