"""JWT authentication driver (pyjwt).

Config keys:

* ``secret`` - HMAC secret for ``HS*`` algorithms;
* ``public_key`` - PEM public key for ``RS*``/``PS*``/``ES*``/``EdDSA``;
* ``algorithms`` - accepted algorithms, default ``["HS256"]``; ``none`` is refused;
* ``issuer``, ``audience`` - checked when configured (a token carrying ``aud`` is refused when
  no audience is configured);
* ``leeway`` - clock skew tolerance in seconds for ``exp``/``nbf``, default ``0``;
* ``required`` - claims that must be present, e.g. ``["exp"]`` (default: none).

A token must carry a subject (``sub`` or ``id``). Tokens that are not shaped like a compact
JWS (three dot-separated parts) are "not mine" (``None``) so another driver may claim them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jwt

from s3db_core.options import number_in

from .base import AuthError, Credentials, User

_ERRORS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "invalid token audience"),
    (jwt.InvalidIssuerError, "invalid token issuer"),
    (jwt.InvalidSignatureError, "invalid token signature"),
    (jwt.InvalidAlgorithmError, "token algorithm not allowed"),
    (jwt.DecodeError, "malformed token"),
)


def _message(exc: jwt.PyJWTError) -> str:
    """A short, token-free message for a pyjwt error."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token is missing the {exc.claim!r} claim"
    for kind, message in _ERRORS:
        if isinstance(exc, kind):
            return message
    return "invalid token"


class JWTDriver:
    """Validates bearer JWTs and turns their claims into a :class:`User`."""

    name = "jwt"

    def __init__(self, config: Mapping[str, Any]) -> None:
        algorithms = config.get("algorithms", ["HS256"])
        if isinstance(algorithms, str) or not algorithms:
            raise ValueError("jwt 'algorithms' must be a non-empty list")
        self._keys: dict[str, Any] = {}
        for alg in algorithms:
            if str(alg).lower() == "none":
                raise ValueError("jwt algorithm 'none' is never accepted")
            try:
                algorithm = jwt.get_algorithm_by_name(alg)
            except NotImplementedError:
                raise ValueError(f"unknown jwt algorithm {alg!r}") from None
            key = config.get("secret") if alg.startswith("HS") else config.get("public_key")
            if not key:
                needed = "secret" if alg.startswith("HS") else "public_key"
                raise ValueError(f"jwt algorithm {alg} needs {needed!r} in the config")
            try:
                self._keys[alg] = algorithm.prepare_key(key)
            except (jwt.InvalidKeyError, ValueError, TypeError):
                raise ValueError(f"jwt key is not usable with {alg}") from None
        self._issuer: str | None = config.get("issuer")
        self._audience: str | list[str] | None = config.get("audience")
        # NaN would make every token valid forever, a negative one refuse fresh tokens.
        self._leeway = number_in("jwt 'leeway'", config.get("leeway", 0), 0, 86400, text=True)
        self._required = list(config.get("required", []))

    async def authenticate(self, creds: Credentials) -> User | None:
        """Return the token's user, ``None`` without a JWT-shaped token, else AuthError."""
        token = creds.token
        if not token or token.count(".") != 2:
            return None
        try:
            alg = jwt.get_unverified_header(token).get("alg")
            key = self._keys.get(alg) if isinstance(alg, str) else None
            if key is None or not isinstance(alg, str):
                raise AuthError("token algorithm not allowed")
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": self._required},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(_message(exc)) from None
        if claims.get("sub", claims.get("id")) in (None, ""):
            raise AuthError("token has no subject")
        exp = claims.get("exp")
        expires_at = float(exp) + self._leeway if isinstance(exp, int | float) else None
        return User(claims, expires_at=expires_at)
