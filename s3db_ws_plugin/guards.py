"""Per-resource policy: which events are broadcast, which fields are protected, which roles may
use the resource, and the guards that authorize each operation.

Guards follow the seed's signatures, sync or async: ``list(user, ctx)``, ``get(user, ctx)``,
``create(user, data)``, ``update(user, ctx)``, ``delete(user, ctx)``, ``subscribe(user, filter)``.
A truthy return allows, a falsy one forbids; a dict returned by ``list``/``subscribe`` allows and
overrides the client's filter key by key (so the guard's keys can never be widened). A guard may
raise ``ForbiddenError`` or ``NotFoundError`` to answer with that code, or s3db's own
``ValidationError`` to reject the data with ``VALIDATION_ERROR`` and its per-field ``details``
(for rules a schema cannot say, like the collab example's operation shapes); any other exception
becomes ``INTERNAL_ERROR`` (logged with an error id, never sent). The role list (``auth``) is
checked before any guard; for get/update/delete the read rule comes between the two, so a guard
is never handed a record the caller may not read (such a record is ``NOT_FOUND``, like a
missing one).

Every key a ``subscribe`` guard returns is the access part of the subscription, including keys
it copied from the client's filter; the client's keys it did not return are the selection.

Two more options decide what a connection may see and write, whatever it asks for:

- ``read``: the read rule, applied to every record that leaves the server, per receiving
  connection (``ReadRule``). Guards decide what a connection may ask for; the read rule decides
  what it may see, so access that changes with the record itself takes effect on the very change
  that removes it.
- ``client_ids`` (default False): whether a client may choose the ``id`` of a record it inserts.
  Off, an ``id`` in an insert is a ``VALIDATION_ERROR``: ids can be neither chosen, squatted
  nor probed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from s3db_core import await_me_maybe
from s3db_core.errors import ValidationError
from s3db_core.log import get_logger
from s3db_core.query import LOGICAL, compile_filter

from .protected import ProtectedFields
from .protocol import EVENT_KINDS

if TYPE_CHECKING:
    from s3db_auth_drivers import User
    from s3db_core import Database

GUARD_KINDS = ("list", "get", "create", "update", "delete", "subscribe")
Guard = Callable[..., Any]
Predicate = Callable[[Any], bool]
USER_PREFIX = "$user."

log = get_logger("s3db.ws")


class _NoClaim:
    """What ``"$user.<claim>"`` becomes when the user lacks the claim (or is anonymous): a value
    equal to nothing, so ``{"ownerId": "$user.id"}`` never matches a record without an owner."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<no claim>"


_NO_CLAIM = _NoClaim()


def _nobody(record: Any) -> bool:
    return False


class ReadRule:
    """A resource's ``read`` option: which records a connection may see.

    Either a synchronous, I/O-free predicate ``read(user, record) -> bool`` (an exception counts
    as False and is logged with an error id), or a filter template whose string values
    ``"$user.<claim>"`` are replaced by the connection's claims, e.g. ``{"$or": [{"isPrivate":
    False}, {"members[]": "$user.id"}]}``. ``bind(user)`` gives the predicate of one user, built
    once per subscription or frame (never per event); a claim the user lacks equals nothing.

    A claim is always a value: where a field's value stands it is compared by equality (an
    object claim ``{"$ne": null}`` is not read as an operator), and a claim shaped like an
    operator (an object with a ``$`` key at any depth) equals nothing at all. Only an operator
    the template itself writes applies to a claim (``{"roomId": {"$in": "$user.rooms"}}``). A
    claim cannot stand for a filter (``{"$or": ["$user.f"]}`` is refused at start-up).
    """

    __slots__ = ("resource", "function", "template")

    def __init__(self, resource: str, rule: Any) -> None:
        self.resource = resource
        self.function: Callable[[Any, Any], Any] | None = None
        self.template: dict[str, Any] | None = None
        if callable(rule):
            self.function = rule
        elif isinstance(rule, Mapping):
            self.template = dict(rule)
            _check_template(self.template, resource)
            try:  # a template that cannot compile is a configuration error, said at start-up
                compile_filter(_bind(self.template, _SAMPLE))
            except ValidationError as exc:
                raise ValueError(
                    f"resource {resource!r}: 'read' is not a valid filter: {exc}"
                ) from None
        else:
            raise ValueError(f"resource {resource!r}: 'read' must be a function or a filter")

    def bind(self, user: Any) -> Predicate:
        """The predicate ``record -> bool`` for ``user`` (None when anonymous)."""
        function = self.function
        if function is not None:
            resource = self.resource

            def readable(record: Any) -> bool:
                try:
                    return bool(function(user, record))
                except Exception:  # fail closed
                    error_id = secrets.token_hex(8)
                    log.exception("read rule failed", error_id=error_id, resource=resource)
                    return False

            return readable
        assert self.template is not None
        try:
            return compile_filter(_bind(self.template, user))
        except ValidationError:  # a claim of the wrong type for its operator: sees nothing
            return _nobody


class _Sample:
    """Stands for a user while a template is checked at start-up: each claim becomes a value of
    the type its place needs (a list as a ``$in``/``$nin`` operand, a string elsewhere)."""


_SAMPLE = _Sample()
_CLAIM_NODES = 4096  # objects, lists and values one claim may hold (walked without recursion)
_CLAIM_DEPTH = 32  # how deep one claim may nest


def _plain(value: Any) -> Any:
    """A claim as a value: itself, or ``_NO_CLAIM`` (equal to nothing) when it is shaped like
    an operator (an object with a ``$`` key, at any depth) or is too big or too deep to compare.
    Walked without recursion, so a claim of any depth costs at most ``_CLAIM_NODES`` steps."""
    if not isinstance(value, Mapping | list):
        return value
    stack: list[tuple[Any, int]] = [(value, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > _CLAIM_NODES or depth > _CLAIM_DEPTH:
            return _NO_CLAIM
        if isinstance(node, Mapping):
            for key, item in node.items():
                if not isinstance(key, str) or key.startswith("$"):
                    return _NO_CLAIM
                if isinstance(item, Mapping | list):
                    stack.append((item, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node if isinstance(item, Mapping | list))
    return value


def _claim(user: Any, name: str, parent: Any) -> Any:
    """The claim ``name`` of ``user`` as a value (``_NO_CLAIM`` when missing)."""
    if user is _SAMPLE:
        return ["claim"] if parent in ("$in", "$nin") else "claim"
    if user is None:
        return _NO_CLAIM
    value = user.get(name) if isinstance(user, Mapping) else getattr(user, name, None)
    if value is None:
        return _NO_CLAIM
    if parent in ("$in", "$nin") and isinstance(value, list):
        # The template applies the operator; each listed value is compared as a value.
        return [_plain(item) for item in value] if len(value) <= _CLAIM_NODES else _NO_CLAIM
    return _plain(value)


def _is_claim(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(USER_PREFIX)


def _is_operators(value: Any) -> bool:
    return isinstance(value, Mapping) and any(
        isinstance(k, str) and k.startswith("$") for k in value
    )


def _check_template(template: Any, resource: str) -> None:
    """Refuse, at start-up, a claim where a filter belongs (``{"$or": ["$user.f"]}``): a claim
    always stands for a value, never for a piece of the filter."""
    stack = [template]
    while stack:
        filter = stack.pop()
        if not isinstance(filter, Mapping):
            continue
        for key, value in filter.items():
            if key not in LOGICAL:
                continue
            if _is_claim(value) or (isinstance(value, list) and any(map(_is_claim, value))):
                raise ValueError(
                    f"resource {resource!r}: 'read' uses a claim as a filter under {key!r}; "
                    'a claim stands for a value (write {"field": "$user.<claim>"})'
                )
            if isinstance(value, list):
                stack.extend(value)


def _bind(filter: Any, user: Any) -> Any:
    """The template ``filter`` with each ``"$user.<claim>"`` replaced by that claim of
    ``user``, always as a value: a claim where a field's value stands becomes ``{"$eq":
    claim}``, so an object claim is compared, never read as operators; as an operator's operand
    it is that operator's value; inside a literal object or list it is part of that literal."""
    if not isinstance(filter, Mapping):
        return filter  # compile_filter says what is wrong with it
    bound: dict[str, Any] = {}
    for key, value in filter.items():
        if key in LOGICAL:
            bound[key] = [_bind(f, user) for f in value] if isinstance(value, list) else value
        elif _is_claim(value):
            bound[key] = {"$eq": _claim(user, value[len(USER_PREFIX) :], key)}
        elif _is_operators(value):
            bound[key] = {op: _literal(operand, user, op) for op, operand in value.items()}
        else:
            bound[key] = _literal(value, user, key)
    return bound


def _literal(value: Any, user: Any, parent: Any) -> Any:
    """A value of the template with its claims bound (each claim a value)."""
    if _is_claim(value):
        return _claim(user, value[len(USER_PREFIX) :], parent)
    if isinstance(value, Mapping):
        return {key: _literal(item, user, key) for key, item in value.items()}
    if isinstance(value, list):
        return [_literal(item, user, None) for item in value]
    return value


class ByKey:
    """Read a context's slots by key as well as by attribute (``ctx["record"]``,
    ``ctx.get("data")``): guards written for dicts keep working."""

    __slots__: tuple[str, ...] = ()

    def __getitem__(self, key: str) -> Any:
        if key not in self.__slots__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.__slots__ else default


class GuardContext(ByKey):
    """What ``list``/``get``/``update``/``delete`` guards see, by attribute or by key.

    ``data`` is the patch to write (mutations are applied); ``record`` is the stored record for
    get/update/delete (``None`` if missing), loaded once and reused by the write.
    """

    __slots__ = ("id", "data", "filter", "record", "user", "db")

    def __init__(
        self,
        *,
        user: User | None,
        db: Database,
        id: str | None = None,
        data: dict[str, Any] | None = None,
        filter: dict[str, Any] | None = None,
        record: dict[str, Any] | None = None,
    ) -> None:
        self.id = id
        self.data = data
        self.filter = filter
        self.record = record
        self.user = user
        self.db = db

    def __repr__(self) -> str:
        return f"GuardContext(id={self.id!r}, user={self.user!r})"


@dataclass(slots=True)
class Decision:
    """A guard's answer: allowed or not, and for list/subscribe the filter keys it imposes."""

    allowed: bool
    filter_override: dict[str, Any] | None = None


def merge_filter(client: dict[str, Any] | None, override: dict[str, Any] | None) -> dict[str, Any]:
    """The effective filter: the client's keys, replaced by the guard's where both name one.

    A ``$or``/``$and`` both name is not replaced but kept as a further condition (the two
    joined by ``$and``): the client's own alternatives only narrow what the guard allows."""
    effective = dict(client or {})
    kept: list[dict[str, Any]] = []
    for key, value in (override or {}).items():
        if key in LOGICAL and key in effective:
            kept.append({key: effective.pop(key)})
        effective[key] = value
    if kept:
        if "$and" in effective:
            kept.insert(0, {"$and": effective["$and"]})
        effective["$and"] = kept
    return effective


def _roles(value: Any, resource: str) -> tuple[frozenset[str] | None, bool]:
    """(allowed roles or None for any, whether a signed-in user is required)."""
    if value is None or value is False:
        return None, False
    if value is True:
        return None, True
    if isinstance(value, str):
        return frozenset({value}), True
    if isinstance(value, Iterable) and all(isinstance(r, str) for r in value):
        return frozenset(value), True
    raise ValueError(f"resource {resource!r}: 'auth' must be a list of role names")


@dataclass(slots=True)
class ResourcePolicy:
    """Everything the plugin enforces for one resource exposed to clients."""

    name: str
    events: frozenset[str] = frozenset(EVENT_KINDS)
    protected: ProtectedFields = field(default_factory=ProtectedFields)
    roles: frozenset[str] | None = None
    requires_user: bool = False
    guards: dict[str, Guard] = field(default_factory=dict)
    order: str = "asc"  # of a `list` frame that names none
    read: ReadRule | None = None
    client_ids: bool = False

    @classmethod
    def from_config(cls, name: str, config: Any) -> ResourcePolicy:
        """Build from ``True`` or ``{events, protected, auth, guard, order, read, client_ids}``;
        ValueError when malformed. ``order`` (``asc``, the default, or ``desc``) is what a
        ``list`` frame without ``order`` gets: ``desc`` serves clients that expect the newest
        records first."""
        if config is True:
            return cls(name)
        if not isinstance(config, Mapping):
            raise ValueError(f"resource {name!r}: config must be True or a dict")
        known = {"events", "protected", "auth", "guard", "guards", "order", "read", "client_ids"}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"resource {name!r}: unknown option(s) {sorted(unknown)}")
        events = config.get("events", EVENT_KINDS)
        if isinstance(events, str) or not all(e in EVENT_KINDS for e in events):
            raise ValueError(f"resource {name!r}: 'events' may only hold {list(EVENT_KINDS)}")
        roles, requires_user = _roles(config.get("auth"), name)
        guards = dict(config.get("guard", config.get("guards")) or {})
        for kind, guard in guards.items():
            if kind not in GUARD_KINDS:
                raise ValueError(f"resource {name!r}: unknown guard {kind!r}; use {GUARD_KINDS}")
            if not callable(guard):
                raise ValueError(f"resource {name!r}: guard {kind!r} is not callable")
        order = config.get("order", "asc")
        if order not in ("asc", "desc"):
            raise ValueError(f"resource {name!r}: 'order' must be 'asc' or 'desc'")
        read = config.get("read")
        client_ids = config.get("client_ids", False)
        if not isinstance(client_ids, bool):
            raise ValueError(f"resource {name!r}: 'client_ids' must be true or false")
        return cls(
            name,
            events=frozenset(events),
            protected=ProtectedFields(config.get("protected") or ()),
            roles=roles,
            requires_user=requires_user,
            guards=guards,
            order=order,
            read=ReadRule(name, read) if read is not None else None,
            client_ids=client_ids,
        )

    def role_allows(self, user: User | None) -> bool:
        """Whether the connection's user may use this resource at all (anonymous is None)."""
        if not self.requires_user:
            return True
        if user is None:
            return False
        return self.roles is None or getattr(user, "role", None) in self.roles

    def readable(self, user: User | None) -> Predicate | None:
        """The read rule bound to ``user``: None when the resource has none (everything is
        readable)."""
        return self.read.bind(user) if self.read is not None else None

    async def check(self, kind: str, user: User | None, arg: Any) -> Decision:
        """Run the ``kind`` guard (allow when there is none). Exceptions propagate."""
        guard = self.guards.get(kind)
        if guard is None:
            return Decision(True)
        result = await await_me_maybe(guard(user, arg))
        if isinstance(result, Mapping):
            # A dict always allows (as in JavaScript, even an empty one is truthy).
            if kind in ("list", "subscribe"):
                return Decision(True, dict(result))
            return Decision(True)
        return Decision(bool(result))
