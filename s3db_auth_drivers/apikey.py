"""API-key authentication driver.

Config keys:

* ``keys`` - either a mapping ``{api_key: user}`` where ``user`` is a dict of claims (``id``,
  ``role`` - default ``"user"`` - and any extra claims) or just the user id; or a list of
  ``{"key": api_key, "user": {...} | id}`` / ``{"key": api_key, "id": ..., "role": ..., ...}``;
* ``header`` - request header carrying the key, default ``x-api-key``;
* ``query_param`` - query parameter carrying the key, default ``apiKey``.

A key found in the header, the query parameter or ``Credentials.api_key`` must be known, else
the connection is rejected. A key may also arrive as the token (``?token=`` or an ``auth``
frame); a token that is not a known key is "not mine" so a JWT driver can take it.
Keys are stored only as SHA-256 digests, so lookups do not compare secrets byte by byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from .base import AuthError, Credentials, User


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _user(claims: Any) -> User:
    """Build the User for one configured key."""
    if isinstance(claims, str | int):
        return User({"id": claims})
    if isinstance(claims, Mapping):
        return User(claims)
    raise ValueError("each api key needs a user dict or a user id")


def _entries(keys: Any) -> list[tuple[str, User]]:
    """Normalize both ``keys`` layouts to (api key, user) pairs."""
    if isinstance(keys, Mapping):
        return [(key, _user(claims)) for key, claims in keys.items()]
    entries = []
    for item in keys:
        if not isinstance(item, Mapping) or "key" not in item:
            raise ValueError("each api key entry needs a 'key'")
        claims = item.get("user", {k: v for k, v in item.items() if k != "key"})
        entries.append((item["key"], _user(claims)))
    return entries


class ApiKeyDriver:
    """Authenticates devices and services by a static API key."""

    name = "apiKey"

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._header = str(config.get("header", "x-api-key")).lower()
        self._query_param = str(config.get("query_param", "apiKey"))
        self._users: dict[bytes, User] = {}
        for key, user in _entries(config.get("keys", {})):
            if not isinstance(key, str) or not key:
                raise ValueError("api keys must be non-empty strings")
            digest = _digest(key)
            if digest in self._users:
                raise ValueError(f"duplicate api key for user {user.id!r}")
            self._users[digest] = user

    async def authenticate(self, creds: Credentials) -> User | None:
        """Return the key's user; reject an unknown key; None when no key is present."""
        key = creds.headers.get(self._header) or creds.query.get(self._query_param) or creds.api_key
        if key:
            user = self._users.get(_digest(key))
            if user is None:
                raise AuthError("invalid api key")
            return user
        if creds.token:
            return self._users.get(_digest(creds.token))
        return None
