"""Who receives a change: the subscription index and the delivery rule.

A change on resource R reaches a connection when R's policy broadcasts that event kind, the
connection's user passes R's role list, and one of its subscriptions on R lists the event kind
and has an effective filter matching the record (for an update: the record before OR after, so
a client learns when a record leaves its filter). Each connection receives at most one frame per
change however many of its subscriptions match.

What a connection receives depends on what it may see, not only on what it asked for. A
subscription's effective filter has two parts: the **access part** (the keys its ``subscribe``
guard imposed, plus the resource's read rule bound to the connection's user) and the
**selection part** (the client's own keys). A record reaches a connection only if it passes the
read rule for that connection. For an update whose before-image the connection could see:

- the after-image passes the access part: ``event update`` with the after-image, even when it
  left the client's own selection (the client learns that it left);
- it fails the access part (a room made private, a collaborator removed): ``event leave`` with
  ``{id}`` only, so a record that moved out of someone's access carries none of its new
  content to them.

A connection whose subscriptions disagree gets the update when any of them allows it.

Cost follows the number of candidate subscriptions, not all of them: each subscription is
indexed under one equality term of its effective filter (``{"roomId": "r1"}`` files it under
``roomId -> "r1"``); subscriptions without any equality term sit in a residual list that every
change scans. A change looks up the record's value for each indexed field (a handful of fields,
whatever the number of subscriptions) and then checks only those candidates with their compiled
filters.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Hashable
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from s3db_core import Change
from s3db_core.log import get_logger
from s3db_core.query import equality_terms, get_path, index_key

if TYPE_CHECKING:
    from .connection import Connection
    from .guards import ResourcePolicy

log = get_logger("s3db.ws")

_UNINDEXABLE = index_key([])
Predicate = Callable[[Any], bool]

class Delivery(IntEnum):
    """What a connection gets for one change: nothing, the record, or a ``leave`` with its id
    (``NOTHING`` is the only false one)."""

    NOTHING = 0
    LEAVE = 1
    RECORD = 2


class Subscription:
    """One subscribe frame's standing query on one resource."""

    __slots__ = (
        "connection",
        "resource",
        "client_filter",
        "filter",
        "events",
        "predicate",
        "term",
        "access",
        "read",
        "hold",
    )

    def __init__(
        self,
        connection: Connection,
        resource: str,
        client_filter: dict[str, Any],
        filter: dict[str, Any],
        events: frozenset[str],
        predicate: Predicate,
        *,
        access: Predicate | None = None,
        read: Predicate | None = None,
    ) -> None:
        self.connection = connection
        self.resource = resource
        self.client_filter = client_filter
        self.filter = filter
        self.events = events
        self.predicate = predicate  # the effective filter, compiled
        # The guard's imposed keys, compiled (None: the guard imposed none).
        self.access = access
        # The resource's read rule bound to the connection's user (None: the resource has none).
        self.read = read
        # (field, index key) under which the subscription is indexed; None = residual.
        self.term: tuple[str, Hashable] | None = None
        # What it counts against its address's and user's budgets (budgets.py); None: nothing.
        self.hold: Any = None

    def matches(self, record: dict[str, Any] | None) -> bool:
        """Whether ``record`` passes the effective filter and the read rule."""
        if record is None:
            return False
        try:
            return self.predicate(record) and (self.read is None or bool(self.read(record)))
        except Exception:  # predicates do not raise; never let one break delivery for others
            _failed("subscription predicate failed", self.resource)
            return False

    def accessible(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` passes the access part: the guard's keys and the read rule."""
        try:
            return (self.access is None or self.access(record)) and (
                self.read is None or bool(self.read(record))
            )
        except Exception:  # fail closed
            _failed("subscription access check failed", self.resource)
            return False

    def delivery(
        self, event: str, after: dict[str, Any] | None, before: dict[str, Any] | None
    ) -> Delivery:
        """What one change brings through this subscription (the module docstring's rule)."""
        if self.matches(after):
            return Delivery.RECORD
        if not self.matches(before):
            return Delivery.NOTHING
        if after is None:  # a delete the connection could see
            return Delivery.RECORD
        return Delivery.RECORD if self.accessible(after) else Delivery.LEAVE


def delivers(sub: Subscription, change: Change, policy: ResourcePolicy) -> Delivery:
    """What ``change`` brings ``sub``'s connection through ``sub``: ``RECORD``, ``LEAVE`` (the
    record left what it may see) or ``NOTHING``. The live delivery rule for one subscription:
    ``SubscriptionRegistry.deliveries`` applies the same (``_outcome``) to every candidate, and
    resume checks replayed and held changes with it."""
    event = change.event
    if event not in policy.events:
        return Delivery.NOTHING
    after = change.record if event != "delete" else None
    return _outcome(sub, event, after, change.previous, policy, policy.requires_user)


def _outcome(
    sub: Subscription,
    event: str,
    after: dict[str, Any] | None,
    before: dict[str, Any] | None,
    policy: ResourcePolicy,
    check_role: bool,
) -> Delivery:
    """The rule itself, for a change whose event ``policy`` broadcasts (fails closed for this
    subscription, never for the others)."""
    if event not in sub.events:
        return Delivery.NOTHING
    if check_role and not policy.role_allows(sub.connection.user):
        return Delivery.NOTHING
    try:
        if sub.access is None and sub.read is None:  # nothing to leave: the hot path
            predicate = sub.predicate
            if (after is not None and predicate(after)) or (
                before is not None and predicate(before)
            ):
                return Delivery.RECORD
            return Delivery.NOTHING
        return sub.delivery(event, after, before)
    except Exception:
        _failed("subscription check failed", sub.resource)
        return Delivery.NOTHING


def _failed(message: str, resource: str) -> None:
    log.exception(message, error_id=secrets.token_hex(8), resource=resource)


class ResourceSubscriptions:
    """The subscriptions on one resource: an equality index plus a residual list."""

    def __init__(self) -> None:
        self.by_term: dict[str, dict[Hashable, set[Subscription]]] = {}
        self.residual: set[Subscription] = set()
        self.count = 0

    def add(self, sub: Subscription) -> None:
        terms = {
            field: key
            for field, value in equality_terms(sub.filter).items()
            if (key := index_key(value)) is not _UNINDEXABLE
        }
        if terms:
            # Prefer a field that is already indexed: fewer fields to look up per change.
            field = next((f for f in terms if f in self.by_term), next(iter(terms)))
            sub.term = (field, terms[field])
            self.by_term.setdefault(field, {}).setdefault(terms[field], set()).add(sub)
        else:
            self.residual.add(sub)
        self.count += 1

    def remove(self, sub: Subscription) -> None:
        if sub.term is None:
            self.residual.discard(sub)
        else:
            field, key = sub.term
            buckets = self.by_term.get(field, {})
            bucket = buckets.get(key)
            if bucket is not None:
                bucket.discard(sub)
                if not bucket:
                    del buckets[key]
                    if not buckets:
                        del self.by_term[field]
        self.count -= 1

    def buckets(self, record: dict[str, Any]) -> list[set[Subscription]]:
        """The index buckets whose subscriptions may match ``record`` (the residual aside)."""
        found_buckets = []
        for field, buckets in self.by_term.items():
            found, value = get_path(record, field)
            # A missing field counts as null for equality.
            bucket = buckets.get(index_key(value if found else None))
            if bucket:
                found_buckets.append(bucket)
        return found_buckets


class SubscriptionRegistry:
    """Every subscription of every connection, by resource and by connection.

    The one owner of the subscription bookkeeping: handlers, re-checks and the connection
    lifecycle change it only through ``add``, ``remove``, ``remove_connection`` and
    ``reindex``; ``of(conn)`` (also ``conn.subscriptions``) reads a connection's. ``release``
    is called with each removed subscription that holds a budget (``sub.hold``)."""

    def __init__(self, release: Callable[[Any], None] | None = None) -> None:
        # One bound method for every connection's clean-up list (none allocated per socket).
        self._forget = self.remove_connection
        self._by_resource: dict[str, ResourceSubscriptions] = {}
        self._by_connection: dict[Connection, list[Subscription]] = {}
        self._release = release

    def __len__(self) -> int:
        return sum(subs.count for subs in self._by_resource.values())

    def __contains__(self, sub: object) -> bool:
        return isinstance(sub, Subscription) and sub in self._by_connection.get(sub.connection, ())

    def of(self, conn: Connection, resource: str | None = None) -> tuple[Subscription, ...]:
        """``conn``'s subscriptions (on ``resource`` only, if given), in subscription order."""
        subs = self._by_connection.get(conn, ())
        if resource is None:
            return tuple(subs)
        return tuple(s for s in subs if s.resource == resource)

    def add(self, sub: Subscription) -> None:
        self._index(sub)
        self._by_connection.setdefault(sub.connection, []).append(sub)
        sub.connection.on_close(self._forget)  # forgotten when the socket closes

    def remove(self, sub: Subscription) -> None:
        subs = self._by_connection.get(sub.connection)
        if subs is None or sub not in subs:
            return
        subs.remove(sub)
        if not subs:
            del self._by_connection[sub.connection]
        self._unindex(sub)
        self._released(sub)

    def remove_connection(self, conn: Connection) -> None:
        """Forget every subscription of ``conn`` (its socket closed)."""
        for sub in self._by_connection.pop(conn, ()):
            self._unindex(sub)
            self._released(sub)

    def _released(self, sub: Subscription) -> None:
        hold, sub.hold = sub.hold, None
        if hold is not None and self._release is not None:
            self._release(hold)

    def set_read(self, sub: Subscription, read: Predicate | None) -> None:
        """Bind ``sub`` to another read rule (its connection's user changed claims)."""
        sub.read = read

    def reindex(
        self,
        sub: Subscription,
        filter: dict[str, Any],
        predicate: Predicate,
        access: Predicate | None = None,
    ) -> None:
        """Give ``sub`` another effective filter (a re-check narrowed it differently), with its
        access part (the guard's keys, compiled)."""
        self._unindex(sub)
        sub.filter, sub.predicate, sub.access = filter, predicate, access
        self._index(sub)

    def _index(self, sub: Subscription) -> None:
        self._by_resource.setdefault(sub.resource, ResourceSubscriptions()).add(sub)

    def _unindex(self, sub: Subscription) -> None:
        subs = self._by_resource.get(sub.resource)
        if subs is not None:
            subs.remove(sub)
            if not subs.count:
                del self._by_resource[sub.resource]

    def deliveries(
        self, change: Change, policy: ResourcePolicy
    ) -> tuple[list[Connection], list[Connection]]:
        """The connections that must receive ``change``'s record, and those that must receive
        ``leave`` instead (the record left their access); each connection at most once."""
        if change.event not in policy.events:
            return [], []
        subs = self._by_resource.get(change.resource)
        if subs is None:
            return [], []
        event = change.event
        after = change.record if event != "delete" else None
        before = change.previous
        # The candidates, group by group, without copying them into one set: a subscription
        # sits in one bucket (or the residual), and a bucket both records select is seen once.
        groups = subs.buckets(after) if after is not None else []
        if before is not None:
            for bucket in subs.buckets(before):
                if not any(bucket is seen for seen in groups):
                    groups.append(bucket)
        if subs.residual:
            groups.append(subs.residual)
        check_role = policy.requires_user
        receivers: dict[Connection, None] = {}
        leaving: dict[Connection, None] = {}
        for group in groups:
            for sub in group:
                conn = sub.connection
                if conn in receivers:
                    continue
                outcome = _outcome(sub, event, after, before, policy, check_role)
                if outcome is Delivery.RECORD:
                    receivers[conn] = None
                elif outcome is Delivery.LEAVE:
                    leaving[conn] = None
        if leaving:  # a connection another of whose subscriptions still sees the record
            return list(receivers), [conn for conn in leaving if conn not in receivers]
        return list(receivers), []
