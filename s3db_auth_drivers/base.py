"""Authentication primitives: the user, the credentials, the driver protocol and the chain.

A driver answers one of three ways for a set of credentials:

* a :class:`User` - the credentials are valid and belong to this user;
* ``None`` - "not mine": the credentials are not in a form this driver handles, ask the next one;
* raise :class:`AuthError` - the credentials are this driver's kind but invalid: reject.

Drivers are found by name in the ``s3db.auth_drivers`` entry-point group, so built-ins and
third-party packages are loaded the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from s3db_core.plugins import await_me_maybe, load_entry_point

ENTRY_POINT_GROUP = "s3db.auth_drivers"


class AuthError(Exception):
    """Credentials were presented but are invalid; the connection must be rejected.

    The message is short and safe to send to the client: it never contains a token or a key.
    """


class User(Mapping[str, Any]):
    """An authenticated principal built from claims (JWT payload, api-key entry, ...).

    * ``user.id`` is the ``sub`` claim, else the ``id`` claim, as a string (required).
    * ``user.role`` is the ``role`` claim, default ``"user"``.
    * every claim is readable by key (``user["tenantId"]``, ``user.get(...)``, ``"x" in user``)
      and by attribute (``user.tenantId``); attribute access to a missing claim returns
      ``None`` (like ``user.name`` in JavaScript), key access raises ``KeyError``.
      Claims named like a method (``get``, ``keys``, ``items``, ``values``, ``to_dict``) or
      starting with ``_`` are reachable by key only.
    * ``user.expires_at`` is the epoch second after which the credentials stop being valid
      (``None`` = no expiry), set by the driver.
    """

    __slots__ = ("_claims", "id", "role", "expires_at")

    id: str
    role: str
    expires_at: float | None

    def __init__(self, claims: Mapping[str, Any], expires_at: float | None = None) -> None:
        subject = claims.get("sub", claims.get("id"))
        if subject is None or subject == "":
            raise ValueError("a user needs a 'sub' or 'id' claim")
        role = claims.get("role")
        object.__setattr__(self, "id", str(subject))
        object.__setattr__(self, "role", str(role) if role is not None else "user")
        object.__setattr__(self, "expires_at", expires_at)
        object.__setattr__(self, "_claims", {**claims, "id": self.id, "role": self.role})

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not slots or methods: i.e. claims.
        if name.startswith("_"):
            raise AttributeError(name)
        return self._claims.get(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("User is read-only")

    def __getitem__(self, key: str) -> Any:
        return self._claims[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._claims)

    def __len__(self) -> int:
        return len(self._claims)

    def __repr__(self) -> str:
        return f"User(id={self.id!r}, role={self.role!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # copy/deepcopy/pickle rebuild through __init__ (attributes are read-only).
        return (User, (self._claims, self.expires_at))

    def to_dict(self) -> dict[str, Any]:
        """Return a copy of the claims (with ``id`` and ``role``) for ``connected`` frames."""
        return dict(self._claims)


def _first_values(items: Any, *, lower: bool) -> dict[str, str]:
    """Turn a (multi)dict or mapping into a plain dict keeping each key's first value."""
    pairs = items.items() if hasattr(items, "items") else items
    result: dict[str, str] = {}
    for key, value in pairs:
        result.setdefault(key.lower() if lower else key, value)
    return result


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client presented, plus request information for third-party drivers.

    ``headers`` keys are lower-cased; ``query`` keeps the first value of each parameter.
    ``repr`` never shows the token or the api key.
    """

    token: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    query: Mapping[str, str] = field(default_factory=dict, repr=False)
    remote: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _first_values(self.headers, lower=True))
        object.__setattr__(self, "query", _first_values(self.query, lower=False))

    @classmethod
    def from_request(
        cls, headers: Mapping[str, str], query: Mapping[str, str], remote: str | None = None
    ) -> Credentials:
        """Extract credentials from a WebSocket upgrade request.

        token: ``?token=``, else ``Authorization: Bearer``; api key: ``x-api-key`` header,
        else ``?apiKey=``. Works with aiohttp's case-insensitive multidicts and plain dicts.
        """
        creds = cls(headers=headers, query=query, remote=remote)
        token = creds.query.get("token") or None
        if token is None:
            scheme, _, value = creds.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                token = value.strip()
        api_key = creds.headers.get("x-api-key") or creds.query.get("apiKey") or None
        return replace(creds, token=token, api_key=api_key)

    @property
    def present(self) -> bool:
        """True when a token or an api key was presented."""
        return bool(self.token or self.api_key)


@runtime_checkable
class AuthDriver(Protocol):
    """An authentication driver; ``authenticate`` may be sync or async."""

    name: str

    async def authenticate(self, creds: Credentials) -> User | None:
        """Return a User, None ("not mine") or raise AuthError (reject)."""
        ...


def load_driver(name: str, config: Mapping[str, Any] | None = None) -> AuthDriver:
    """Instantiate the driver registered as ``name`` in ``s3db.auth_drivers`` with ``config``."""
    driver = load_entry_point(ENTRY_POINT_GROUP, name, kind="auth driver")(dict(config or {}))
    if not callable(getattr(driver, "authenticate", None)):
        raise TypeError(f"auth driver {name!r} has no authenticate() method")
    return driver


class AuthChain:
    """Drivers tried in configured order; built from ``[{"driver": name, "config": {...}}]``.

    Entries may also be driver objects. Drivers are instantiated at construction so that a bad
    configuration fails at startup. With no drivers configured, credentials are ignored and
    every connection is anonymous.
    """

    def __init__(self, drivers_config: Sequence[Mapping[str, Any] | AuthDriver]) -> None:
        self.drivers: list[AuthDriver] = []
        for entry in drivers_config:
            if not isinstance(entry, Mapping):
                self.drivers.append(entry)
                continue
            name = entry.get("driver")
            if not isinstance(name, str):
                raise ValueError("each auth driver entry needs a 'driver' name")
            self.drivers.append(load_driver(name, entry.get("config")))

    async def authenticate(self, creds: Credentials) -> User | None:
        """First User wins; AuthError rejects; no User and credentials present -> reject."""
        if not self.drivers:
            return None
        for driver in self.drivers:
            result = await await_me_maybe(driver.authenticate(creds))
            if result is None:
                continue
            if isinstance(result, User):
                return result
            if isinstance(result, Mapping):
                return User(result)
            raise TypeError(f"auth driver returned {type(result).__name__}, not a User")
        if creds.present:
            raise AuthError("invalid credentials")
        return None
