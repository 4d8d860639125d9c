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
checked before any guard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from s3db_core import await_me_maybe

from .protected import ProtectedFields
from .protocol import EVENT_KINDS

if TYPE_CHECKING:
    from s3db_auth_drivers import User
    from s3db_core import Database

GUARD_KINDS = ("list", "get", "create", "update", "delete", "subscribe")
Guard = Callable[..., Any]


class GuardContext:
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

    def __getitem__(self, key: str) -> Any:
        if key not in self.__slots__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.__slots__ else default

    def __repr__(self) -> str:
        return f"GuardContext(id={self.id!r}, user={self.user!r})"


@dataclass(slots=True)
class Decision:
    """A guard's answer: allowed or not, and for list/subscribe the filter keys it imposes."""

    allowed: bool
    filter_override: dict[str, Any] | None = None


def merge_filter(client: dict[str, Any] | None, override: dict[str, Any] | None) -> dict[str, Any]:
    """The effective filter: the client's keys, replaced by the guard's where both name one."""
    effective = dict(client or {})
    if override:
        effective.update(override)
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

    @classmethod
    def from_config(cls, name: str, config: Any) -> ResourcePolicy:
        """Build from ``True`` or ``{events, protected, auth, guard, order}``; ValueError when
        malformed. ``order`` (``asc``, the default, or ``desc``) is what a ``list`` frame without
        ``order`` gets: ``desc`` serves clients that expect the newest records first."""
        if config is True:
            return cls(name)
        if not isinstance(config, Mapping):
            raise ValueError(f"resource {name!r}: config must be True or a dict")
        unknown = set(config) - {"events", "protected", "auth", "guard", "guards", "order"}
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
        return cls(
            name,
            events=frozenset(events),
            protected=ProtectedFields(config.get("protected") or ()),
            roles=roles,
            requires_user=requires_user,
            guards=guards,
            order=order,
        )

    def role_allows(self, user: User | None) -> bool:
        """Whether the connection's user may use this resource at all (anonymous is None)."""
        if not self.requires_user:
            return True
        if user is None:
            return False
        return self.roles is None or getattr(user, "role", None) in self.roles

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
