"""Record ids: generated ones are time-ordered, user-given ones are checked for a safe alphabet.

A generated id is 22 characters from a 64-character URL-safe alphabet listed in ASCII order, so
that plain string order (and therefore S3 key order) is creation order. It encodes 132 bits: a
48-bit millisecond timestamp followed by 84 bits that are random for a new millisecond and
incremented by one within the same millisecond, or while the clock stands behind the last id
(like a monotonic ULID). Ids are strictly increasing within a process, across threads.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import threading
import time

from s3db_core.errors import ValidationError

ALPHABET = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
ID_LENGTH = 22
MAX_ID_LENGTH = 255
ID_PATTERN = re.compile(r"[A-Za-z0-9._~:@-]{1,255}")

_RANDOM_BITS = 84
_TIME_BITS = 48
# base64 maps 6-bit groups to this alphabet; translating keeps the group value, changes the char.
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_SORTED = bytes.maketrans(_B64, ALPHABET.encode())

_lock = threading.Lock()
_last = 0


def _reset_after_fork() -> None:
    """A forked child must not continue its parent's sequence (same ms -> same ids)."""
    global _last
    _last = 0


os.register_at_fork(after_in_child=_reset_after_fork)


def _encode(value: int) -> str:
    """132-bit int -> 22 chars, most significant first (12 zero bits pad it to 18 bytes)."""
    raw = base64.urlsafe_b64encode((value << 12).to_bytes(18, "big"))
    return raw[:ID_LENGTH].translate(_TO_SORTED).decode()


def new_id() -> str:
    """A new 22-character id, greater than every id this process generated before."""
    global _last
    now_ms = time.time_ns() // 1_000_000 & ((1 << _TIME_BITS) - 1)
    with _lock:
        if now_ms > _last >> _RANDOM_BITS:
            value = now_ms << _RANDOM_BITS | secrets.randbits(_RANDOM_BITS)
        else:
            value = _last + 1
        _last = value
    return _encode(value)


def validate_id(id: object) -> str:
    """Return a user-given id unchanged, or raise ValidationError on field "id"."""
    if not isinstance(id, str):
        raise ValidationError([{"field": "id", "rule": "type", "message": "id must be a string"}])
    if not ID_PATTERN.fullmatch(id):
        if not id or len(id) > MAX_ID_LENGTH:
            message = f"id must be 1 to {MAX_ID_LENGTH} characters long"
            rule = "length"
        else:
            message = "id may only contain letters, digits and . _ ~ : @ -"
            rule = "format"
        raise ValidationError([{"field": "id", "rule": rule, "message": message}])
    return id
