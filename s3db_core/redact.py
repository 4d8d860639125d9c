"""Credentials out of text meant for people: error messages and log lines.

``redact(text, secrets)`` hides, in any text:

* the user-info of every URL (``http://AKID:secret@host/b`` -> ``http://***@host/b``);
* the value of credential-bearing query and fragment parameters, by name (``?token=``,
  ``apiKey``, ``password``, ``jwt``, ``sessionToken``, S3's ``X-Amz-Signature``,
  ``#access_token=``...);
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

# scheme://user[:password]@ -- the user-info runs to the last "@" before any "/" or space; a
# password written unencoded may hold "?" or "#" (``s3://AKID:pa#ss@bucket``), so they do not end
# it (a query holding "@" is masked too: more than needed, never less).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]{0,31}://)[^/@\s\"'<>]+@")
# A query or fragment parameter whose name says it carries a credential: these words anywhere
# in the name, any case (``sessionToken``, ``X-Amz-Signature``, ``X-Goog-Credential``,
# ``client_secret``, ``apiKey``...).
_SECRET_NAME_WORDS = (
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "pwd",
    "signature",
    "credential",
    "auth",
    "jwt",
    "session",
    "sig",
)
_SECRET_WORD = re.compile("|".join(_SECRET_NAME_WORDS), re.IGNORECASE)
# Every "name=value" after "?", "&", ";" or "#" (names of at most 64 characters, so that a long
# text is scanned in linear time); the value is masked when the name holds one of those words.
_PARAM = re.compile(r"(?P<name>[?&;#][A-Za-z0-9_.-]{1,64}=)(?P<value>[^&;#\s\"'<>]*)")
# Characters that can be part of a credential (base64, URL-safe base64, percent-encoding, JWT
# dots): a secret is only masked where none of them touches it on either side ("=" only after
# it: base64 padding ends a credential, while "name=" before one is a parameter).
_CREDENTIAL_CHARS = r"A-Za-z0-9+/=_.~%-"
_BEFORE_CREDENTIAL = r"A-Za-z0-9+/_.~%-"


@lru_cache(maxsize=64)
def _whole(secret: str) -> re.Pattern[str]:
    forms = sorted({secret, quote(secret, safe="")}, key=len, reverse=True)
    alternatives = "|".join(re.escape(form) for form in forms)
    return re.compile(rf"(?<![{_BEFORE_CREDENTIAL}])(?:{alternatives})(?![{_CREDENTIAL_CHARS}])")


class Verbatim(str):
    """Literal text written by the program (a hint, an example with placeholders), which
    ``redact`` returns unchanged. Never wrap text that holds user input: anything built from a
    ``Verbatim`` (formatting, concatenation) is a plain ``str`` again and is redacted."""

    __slots__ = ()


def _mask_credential_param(found: re.Match[str]) -> str:
    name = found["name"]
    return name + MASK if _SECRET_WORD.search(name) else found[0]


def redact_urls(text: str) -> str:
    """``text`` with URL user-info and credential query parameters masked."""
    if isinstance(text, Verbatim):
        return text
    if "://" in text:
        text = _USERINFO.sub(lambda m: m["scheme"] + MASK + "@", text)
    if "=" in text:
        text = _PARAM.sub(_mask_credential_param, text)
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
