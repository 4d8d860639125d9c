"""Credentials out of text meant for people: error messages and log lines.

``redact(text, secrets)`` hides, in any text:

* the user-info of every URL (``http://AKID:secret@host/b`` -> ``http://***@host/b``);
* the value of credential-bearing query parameters (``?token=``, ``apiKey``, ``password``,
  S3 presigned ``X-Amz-Signature``...);
* each of ``secrets`` where it appears as a whole credential, never inside a longer word: with
  an access key ``k``, "bucket" stays "bucket" while "key k" becomes "key ***".

Text the program wrote itself (a hint whose example is ``s3://KEY:SECRET@bucket/prefix``) is
marked ``Verbatim`` and left as written: its placeholders are not secrets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import quote

MASK = "***"

# scheme://user[:password]@ -- the user-info ends at the first "@" before any "/", "?", "#".
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s\"'<>]+@")
_SECRET_PARAMS = (
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "apikey",
    "api_key",
    "api-key",
    "key",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
)
_QUERY = re.compile(
    r"(?P<name>[?&;](?:" + "|".join(re.escape(p) for p in _SECRET_PARAMS) + r")=)[^&#\s\"'<>]*",
    re.IGNORECASE,
)
# Characters that can be part of a credential (base64, URL-safe base64, percent-encoding, JWT
# dots): a secret is only masked where none of them touches it on either side.
_CREDENTIAL_CHARS = r"A-Za-z0-9+/=_.~%-"


@lru_cache(maxsize=64)
def _whole(secret: str) -> re.Pattern[str]:
    forms = sorted({secret, quote(secret, safe="")}, key=len, reverse=True)
    alternatives = "|".join(re.escape(form) for form in forms)
    return re.compile(rf"(?<![{_CREDENTIAL_CHARS}])(?:{alternatives})(?![{_CREDENTIAL_CHARS}])")


class Verbatim(str):
    """Literal text written by the program (a hint, an example with placeholders), which
    ``redact`` returns unchanged. Never wrap text that holds user input: anything built from a
    ``Verbatim`` (formatting, concatenation) is a plain ``str`` again and is redacted."""

    __slots__ = ()


def redact_urls(text: str) -> str:
    """``text`` with URL user-info and credential query parameters masked."""
    if isinstance(text, Verbatim):
        return text
    if "://" in text:
        text = _USERINFO.sub(lambda m: m["scheme"] + MASK + "@", text)
    if "=" in text:
        text = _QUERY.sub(lambda m: m["name"] + MASK, text)
    return text


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with URL credentials masked and every one of ``secrets`` masked where it
    stands as a whole credential (not as a substring of a longer word). ``Verbatim`` text is
    returned as is."""
    if isinstance(text, Verbatim):
        return text
    text = redact_urls(text)
    for secret in secrets:
        if secret:
            text = _whole(secret).sub(MASK, text)
    return text
