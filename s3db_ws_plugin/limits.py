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
  Such a frame still answers with its ``requestId``: ``recover_request_id`` finds it in the raw
  text with one bounded regular expression (linear, no parse).
- Anything from a client that reaches a log line goes through ``clip``; a ``requestId`` longer
  than ``MAX_REQUEST_ID`` characters is refused.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from s3db_core.log import get_logger
from s3db_core.query import LOGICAL, FilterLimitError, FilterLimits
from s3db_core.resource import page_cursor

from .protocol import MAX_REQUEST_ID, ErrorCode, ProtocolError, encode, request_id_of

if TYPE_CHECKING:
    from .guards import ResourcePolicy

log = get_logger("s3db.ws")

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
    "page_within",
    "recover_request_id",
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


# "requestId": then a JSON string of at most 2 x MAX_REQUEST_ID characters as written (escapes
# take two or more) or a JSON number, followed by the end of the member.
_RID = (
    r'"requestId"\s*:\s*("(?:[^"\\\x00-\x1f]|\\.){0,'
    + str(2 * MAX_REQUEST_ID)
    + r'}"|-?\d{1,20}(?:\.\d{1,20})?(?:[eE][+-]?\d{1,3})?)(?=\s*[,}])'
)
_RID_TEXT = re.compile(_RID)
_RID_WINDOW = 4096  # characters searched at each end of a refused frame
_RID_BYTES = re.compile(_RID.encode())


def recover_request_id(raw: str | bytes) -> str | int | float | None:
    """The ``requestId`` of a frame refused before it was parsed, found in its raw text, or None
    (none there, or not a valid one). Only the first and the last ``_RID_WINDOW`` characters
    are searched (where clients put it: before or after the bulk of the frame), so the cost is
    the same for any frame. The first ``"requestId":`` member whose value is a JSON string or
    number counts (a frame that nests another one first only confuses its own sender)."""
    pattern: Any = _RID_TEXT if isinstance(raw, str) else _RID_BYTES
    match = pattern.search(raw, 0, _RID_WINDOW)
    if match is None and len(raw) > _RID_WINDOW:
        match = pattern.search(raw, max(_RID_WINDOW, len(raw) - _RID_WINDOW))
    if match is None:
        return None
    try:
        value = orjson.loads(match.group(1))
    except orjson.JSONDecodeError:
        return None
    return request_id_of({"requestId": value})


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


_CHUNK = 32  # records serialized per call while a page is checked against its byte budget


def page_within(
    records: list[dict[str, Any]],
    cursor: str | None,
    policy: ResourcePolicy,
    order: str,
    max_bytes: int,
) -> tuple[list[Any], str | None]:
    """The page's records, stripped of protected fields and serialized once (the reply embeds
    the bytes), cut after the record that reaches ``max_bytes``, with a cursor after the last
    one kept. Records are serialized ``_CHUNK`` at a time (one call each, as cheap as one for the
    whole page) and one by one only in the chunk that reaches the budget. A record that cannot
    be serialized is left out and logged."""
    strip = policy.protected.strip if policy.protected else None
    data: list[Any] = []
    size = 0
    for start in range(0, len(records), _CHUNK):
        chunk = records[start : start + _CHUNK]
        stripped = [strip(r) for r in chunk] if strip is not None else chunk
        try:
            encoded = orjson.dumps(stripped)
        except TypeError:  # a value orjson refuses: one by one, to find and skip it
            encoded = None
        if encoded is not None and size + len(encoded) < max_bytes:
            data.append(orjson.Fragment(encoded[1:-1]))  # "a,b,c": elements of the outer list
            size += len(encoded)
            continue
        for index, record in enumerate(stripped, start):
            try:
                one = encode(record)
            except Exception:
                log.exception(
                    "record left out of a list page",
                    error_id=secrets.token_hex(8),
                    resource=policy.name,
                    record_id=clip(chunk[index - start].get("id")),
                )
                continue
            data.append(orjson.Fragment(one))
            size += len(one)
            if size >= max_bytes and index < len(records) - 1:
                return data, page_cursor(record["id"], order)
    return data, cursor
