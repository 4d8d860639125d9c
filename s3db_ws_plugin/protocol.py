"""Wire protocol v1: parsing and validating client frames, building server frames.

Every client frame is a JSON object with a ``type``; it may carry a ``requestId`` (string or
number) that every reply to it echoes, errors included. Unknown fields are ignored. This module
knows the shape of each message type and nothing about resources, users or sockets; see
``docs/protocol.md`` for the contract as a client developer reads it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import orjson

PROTOCOL_VERSION = 1
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
EVENT_KINDS = ("insert", "update", "delete")
MAX_OFFSET = 2**63 - 1  # stream offsets are 64-bit
MAX_EPOCH_LENGTH = 128


class ErrorCode:
    """The ``code`` of an ``error`` frame."""

    INVALID_JSON = "INVALID_JSON"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    RESOURCE_NOT_FOUND = "RESOURCE_NOT_FOUND"
    NOT_FOUND = "NOT_FOUND"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    CONFLICT = "CONFLICT"
    RATE_LIMITED = "RATE_LIMITED"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class CloseCode:
    """WebSocket close codes the server uses."""

    GOING_AWAY = 1001  # server shutting down
    MESSAGE_TOO_BIG = 1009  # frame above max_message_size (sent by aiohttp's reader)
    UNAUTHORIZED = 4401  # invalid credentials or expired token; an error frame precedes it
    SLOW_CONSUMER = 4408  # send queue overflow


class ProtocolError(Exception):
    """An error reply: ``code``, a message a user can act on, optional ``details``."""

    def __init__(self, code: str, message: str, details: Any = None, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.extra = extra


def invalid(field: str, message: str) -> ProtocolError:
    return ProtocolError(
        ErrorCode.INVALID_MESSAGE,
        f"invalid message: {field!r} {message}",
        {"field": field, "message": message},
    )


@dataclass(slots=True)
class Request:
    """A validated client frame: its ``type``, ``requestId`` and the type's fields."""

    type: str
    request_id: str | int | float | None
    fields: dict[str, Any]


def _absent(value: Any) -> bool:
    return value is None


def _str(msg: dict, name: str, *, required: bool) -> str | None:
    value = msg.get(name)
    if _absent(value):
        if required:
            raise invalid(name, "is required")
        return None
    if not isinstance(value, str) or not value:
        raise invalid(name, "must be a non-empty string")
    return value


def _object(msg: dict, name: str, *, required: bool) -> dict | None:
    value = msg.get(name)
    if _absent(value):
        if required:
            raise invalid(name, "is required")
        return None
    if not isinstance(value, dict):
        raise invalid(name, "must be an object")
    return value


def _events(msg: dict) -> tuple[str, ...] | None:
    value = msg.get("events")
    if _absent(value):
        return None
    if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
        raise invalid("events", "must be a list of event names")
    unknown = [e for e in value if e not in EVENT_KINDS]
    if unknown:
        raise invalid("events", f"may only hold {', '.join(EVENT_KINDS)}")
    return tuple(e for e in EVENT_KINDS if e in value)


def _limit(msg: dict) -> int:
    value = msg.get("limit")
    if _absent(value):
        return DEFAULT_LIST_LIMIT
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_LIST_LIMIT:
        raise invalid("limit", f"must be an integer from 1 to {MAX_LIST_LIMIT}")
    return value


def _flag(msg: dict, name: str) -> bool:
    value = msg.get(name)
    if _absent(value):
        return False
    if not isinstance(value, bool):
        raise invalid(name, "must be true or false")
    return value


def _since(msg: dict) -> dict[str, Any] | None:
    """A stream position ``{offset, epoch}``: what a resuming client saw last."""
    value = msg.get("since")
    if _absent(value):
        return None
    if not isinstance(value, dict):
        raise invalid("since", "must be an object {offset, epoch}")
    offset, epoch = value.get("offset"), value.get("epoch")
    if isinstance(offset, float) and offset.is_integer():
        offset = int(offset)
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_OFFSET:
        raise invalid("since", f"'offset' must be an integer from 0 to {MAX_OFFSET}")
    if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_LENGTH:
        raise invalid("since", f"'epoch' must be a string of 1 to {MAX_EPOCH_LENGTH} characters")
    return {"offset": offset, "epoch": epoch}


def _order(msg: dict) -> str | None:
    """``asc``/``desc``; None when absent (the resource's default order applies)."""
    value = msg.get("order")
    if _absent(value):
        return None
    if value not in ("asc", "desc"):
        raise invalid("order", "must be 'asc' or 'desc'")
    return value


def _fields(kind: str, msg: dict) -> dict[str, Any]:
    """The validated fields of one message type (ProtocolError INVALID_MESSAGE otherwise)."""
    if kind == "ping":
        return {}
    if kind == "auth":
        return {"token": _str(msg, "token", required=True)}
    fields: dict[str, Any] = {"resource": _str(msg, "resource", required=True)}
    if kind == "subscribe":
        fields["filter"] = _object(msg, "filter", required=False)
        fields["events"] = _events(msg)
        fields["since"] = _since(msg)
        fields["snapshot"] = _flag(msg, "snapshot")
        if fields["since"] is not None and fields["snapshot"]:
            raise invalid("since", "cannot be combined with snapshot")
        fields["limit"] = _limit(msg)  # the snapshot's page size
    elif kind == "unsubscribe":
        fields["filter"] = _object(msg, "filter", required=False)
    elif kind == "list":
        fields["filter"] = _object(msg, "filter", required=False)
        fields["limit"] = _limit(msg)
        fields["cursor"] = _str(msg, "cursor", required=False)
        fields["order"] = _order(msg)
    elif kind in ("get", "delete"):
        fields["id"] = _str(msg, "id", required=True)
    elif kind == "insert":
        fields["data"] = _object(msg, "data", required=True)
    elif kind == "update":
        fields["id"] = _str(msg, "id", required=True)
        fields["data"] = _object(msg, "data", required=True)
    return fields


MESSAGE_TYPES = frozenset(
    {"ping", "auth", "subscribe", "unsubscribe", "list", "get", "insert", "update", "delete"}
)


def decode(raw: str | bytes) -> Any:
    """The JSON value of a frame; ProtocolError INVALID_JSON if it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError(ErrorCode.INVALID_JSON, "frame is not valid JSON") from None


def request_id_of(msg: Any) -> str | int | float | None:
    """The frame's ``requestId`` if it is a string or a number (anything else is not echoed)."""
    if isinstance(msg, dict):
        rid = msg.get("requestId")
        if isinstance(rid, str | int | float) and not isinstance(rid, bool):
            return rid
    return None


def parse(msg: Any) -> Request:
    """Validate a decoded frame into a Request, or raise ProtocolError."""
    if not isinstance(msg, dict):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            "a frame must be a JSON object",
            {"field": "", "message": "must be an object"},
        )
    rid = msg.get("requestId")
    if rid is not None and (type(rid) is bool or not isinstance(rid, str | int | float)):
        raise invalid("requestId", "must be a string or a number")  # see request_id_of
    kind = msg.get("type")
    if kind is None:
        raise invalid("type", "is required")
    if not isinstance(kind, str):
        raise invalid("type", "must be a string")
    if kind not in MESSAGE_TYPES:
        raise ProtocolError(
            ErrorCode.UNKNOWN_MESSAGE_TYPE,
            f"unknown message type {kind[:64]!r}",
            {"type": kind[:64], "known": sorted(MESSAGE_TYPES)},
        )
    return Request(kind, rid, _fields(kind, msg))


def now_ms() -> int:
    return int(time.time() * 1000)


def encode(frame: dict[str, Any]) -> bytes:
    """Serialize a server frame (orjson; the stdlib for the rare value orjson refuses)."""
    try:
        return orjson.dumps(frame)
    except TypeError:  # integers beyond 64 bits
        return json.dumps(frame, default=str, ensure_ascii=False).encode()


def reply(kind: str, request_id: str | int | float | None = None, **fields: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": kind}
    if request_id is not None:
        frame["requestId"] = request_id
    frame.update(fields)
    return frame


def error_frame(
    error: ProtocolError, request_id: str | int | float | None = None
) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": error.code, "message": error.message}
    if request_id is not None:
        frame["requestId"] = request_id
    if error.details is not None:
        frame["details"] = error.details
    frame.update(error.extra)
    return frame
