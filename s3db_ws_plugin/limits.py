"""Bounds on what one client can make the server do, and the helpers that enforce them.

A hostile client, signed in or not, must not be able to stall the event loop, pin unbounded
memory or flood the logs. The plugin's options (``filter_limits``, ``max_subscriptions``,
``list_scan_limit``, ``list_max_bytes``, ``max_frame_values``) set these; the defaults below are documented in
``docs/protocol.md`` ("Limits").

- Filters (``list``, ``subscribe`` and what a guard makes of them) are checked against
  ``FilterLimits`` before they are compiled, and compiled once per frame.
- A ``list`` reads at most ``list_scan_limit`` records and answers at most about
  ``list_max_bytes`` of records; either way the page ends early with a cursor.
- A frame is parsed only if it holds at most ``max_frame_values`` commas and colons (an upper
  bound on the JSON values in it, counted in well under a millisecond): parsing a 1 MB frame of
  33,000 keys costs the event loop 15-25 ms, counting its separators a fraction of one.
- Anything from a client that reaches a log line goes through ``clip``; a ``requestId`` longer
  than ``MAX_REQUEST_ID`` characters is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from s3db_core.query import LOGICAL, FilterLimitError, FilterLimits

from .protocol import MAX_REQUEST_ID, ErrorCode, ProtocolError

__all__ = [
    "DEFAULT_LIST_MAX_BYTES",
    "DEFAULT_LIST_SCAN_LIMIT",
    "DEFAULT_MAX_FRAME_VALUES",
    "DEFAULT_MAX_SUBSCRIPTIONS",
    "LOG_CLIP",
    "MAX_REQUEST_ID",
    "FilterLimitError",
    "FilterLimits",
    "check_frame",
    "clip",
    "filter_fields",
    "limit_error",
    "positive_int",
]

DEFAULT_MAX_SUBSCRIPTIONS = 100  # per connection
DEFAULT_LIST_SCAN_LIMIT = 500  # records read by one list frame
DEFAULT_LIST_MAX_BYTES = 1 << 20  # bytes of records in one list reply
DEFAULT_MAX_FRAME_VALUES = 20_000  # "," and ":" in one frame (see check_frame)
_SMALL_FRAME = 16_384  # characters: a frame this short cannot hold that many values
LOG_CLIP = 200  # characters of a client-supplied string kept in a log line


def clip(value: Any, limit: int = LOG_CLIP) -> Any:
    """``value`` cut to ``limit`` characters (with a marker) when it is a long string; a client
    string that reaches a log line goes through this. Other values are returned as they are."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}...[{len(value)} chars]"
    return value


def check_frame(raw: str | bytes, max_values: int) -> None:
    """Refuse (``INVALID_MESSAGE``) a frame with more than ``max_values`` commas and colons
    before it is parsed. Commas and colons inside strings count too: the bound is generous
    (a megabyte of prose holds about 16,000 commas)."""
    if len(raw) <= _SMALL_FRAME:
        return
    if isinstance(raw, str):
        count = raw.count(",") + raw.count(":")
    else:
        count = raw.count(b",") + raw.count(b":")
    if count > max_values:
        message = f"frame holds more than {max_values} values"
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"invalid message: {message}",
            {"field": "", "message": message, "limit": "values", "max": max_values},
        )


def limit_error(exc: FilterLimitError) -> ProtocolError:
    """The ``INVALID_MESSAGE`` a filter over its limits gets: ``details`` name the limit."""
    return ProtocolError(
        ErrorCode.INVALID_MESSAGE,
        f"invalid message: 'filter' {exc.message}",
        {"field": "filter", "message": exc.message, "limit": exc.limit, "max": exc.max},
    )


def filter_fields(filter: dict[str, Any]) -> Iterator[str]:
    """Every field key of a filter, inside ``$or``/``$and`` branches too (for a filter already
    within its limits: bounded work)."""
    stack = [filter]
    while stack:
        current = stack.pop()
        for key, value in current.items():
            if key in LOGICAL:
                if isinstance(value, list):
                    stack.extend(branch for branch in value if isinstance(branch, dict))
            elif isinstance(key, str):
                yield key


def positive_int(name: str, value: Any) -> int:
    """An option that must be a positive integer (ValueError naming it otherwise)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer")
    return value
