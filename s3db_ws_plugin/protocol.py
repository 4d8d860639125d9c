"""Wire protocol v1: parsing and validating client frames, building server frames.

Every client frame is a JSON object with a ``type``; it may carry a ``requestId`` (string or
number) that every reply to it echoes, errors included. Unknown fields are ignored. This module
holds the field validators a message type is declared with (``@message(...)`` beside its
handler in ``handlers.py``), the error codes, and which core errors a client sees; it knows
nothing about resources, users or sockets. See ``docs/protocol.md`` for the contract as a client
developer reads it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from s3db_core.errors import S3dbError

DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
EVENT_KINDS = ("insert", "update", "delete")
MAX_OFFSET = 2**63 - 1  # stream offsets are 64-bit
MAX_EPOCH_LENGTH = 128
MAX_REQUEST_ID = 128  # characters of a string requestId
CUSTOM_TYPE_MAX = 128  # characters of a custom message type (see parse)


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


# The core errors a client sees with their own code (``S3dbError.code``); any other exception is
# an internal error (logged with an id, answered ``INTERNAL_ERROR``).
CLIENT_ERROR_CODES = frozenset(
    {ErrorCode.VALIDATION_ERROR, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND, ErrorCode.CONFLICT}
)


def client_error(exc: Exception) -> ProtocolError | None:
    """The error frame a core or guard exception maps to; None for internal errors."""
    if isinstance(exc, ProtocolError):
        return exc
    if isinstance(exc, S3dbError) and exc.code in CLIENT_ERROR_CODES:
        message = str(exc) or exc.code.lower().replace("_", " ")
        return ProtocolError(exc.code, message, getattr(exc, "errors", None))
    return None


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


# -- field validators: ``validate(msg, name) -> value`` (ProtocolError INVALID_MESSAGE) --------
Field = Callable[[dict[str, Any], str], Any]


def required_text(msg: dict[str, Any], name: str) -> str:
    """A non-empty string that must be present."""
    value = msg.get(name)
    if isinstance(value, str) and value:
        return value
    raise invalid(name, "is required" if value is None else "must be a non-empty string")


def optional_text(msg: dict[str, Any], name: str) -> str | None:
    """A non-empty string, or None when absent."""
    value = msg.get(name)
    if value is None or (isinstance(value, str) and value):
        return value
    raise invalid(name, "must be a non-empty string")


def required_object(msg: dict[str, Any], name: str) -> dict[str, Any]:
    """A JSON object that must be present."""
    value = msg.get(name)
    if isinstance(value, dict):
        return value
    raise invalid(name, "is required" if value is None else "must be an object")


def optional_object(msg: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A JSON object, or None when absent."""
    value = msg.get(name)
    if value is None or isinstance(value, dict):
        return value
    raise invalid(name, "must be an object")


def event_kinds(msg: dict[str, Any], name: str) -> tuple[str, ...] | None:
    """A list of event kinds (in ``EVENT_KINDS`` order), or None when absent."""
    value = msg.get(name)
    if _absent(value):
        return None
    if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
        raise invalid(name, "must be a list of event names")
    unknown = [e for e in value if e not in EVENT_KINDS]
    if unknown:
        raise invalid(name, f"may only hold {', '.join(EVENT_KINDS)}")
    return tuple(e for e in EVENT_KINDS if e in value)


def list_limit(msg: dict[str, Any], name: str) -> int:
    """An integer from 1 to ``MAX_LIST_LIMIT``; ``DEFAULT_LIST_LIMIT`` when absent."""
    value = msg.get(name)
    if _absent(value):
        return DEFAULT_LIST_LIMIT
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_LIST_LIMIT:
        raise invalid(name, f"must be an integer from 1 to {MAX_LIST_LIMIT}")
    return value


def record_version(msg: dict[str, Any], name: str) -> int | None:
    """A record version (an integer from 1), or None when absent."""
    value = msg.get(name)
    if _absent(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid(name, "must be a positive integer (the version you read)")
    return value


def sort_order(msg: dict[str, Any], name: str) -> str | None:
    """``asc``/``desc``; None when absent (the resource's default order applies)."""
    value = msg.get(name)
    if _absent(value):
        return None
    if value not in ("asc", "desc"):
        raise invalid(name, "must be 'asc' or 'desc'")
    return str(value)


def flag(msg: dict[str, Any], name: str) -> bool:
    """A boolean; False when absent."""
    value = msg.get(name)
    if _absent(value):
        return False
    if not isinstance(value, bool):
        raise invalid(name, "must be true or false")
    return value


def stream_position(msg: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A stream position ``{offset, epoch}`` (what a resuming client saw last), or None."""
    value = msg.get(name)
    if _absent(value):
        return None
    if not isinstance(value, dict):
        raise invalid(name, "must be an object {offset, epoch}")
    offset, epoch = value.get("offset"), value.get("epoch")
    if isinstance(offset, float) and offset.is_integer():
        offset = int(offset)
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_OFFSET:
        raise invalid(name, f"'offset' must be an integer from 0 to {MAX_OFFSET}")
    if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_LENGTH:
        raise invalid(name, f"'epoch' must be a string of 1 to {MAX_EPOCH_LENGTH} characters")
    return {"offset": offset, "epoch": epoch}


# -- message declarations ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Message:
    """A message type: its fields (validated in this order), whether it may come before the
    connection has authenticated, and how the session runs it: ``inline`` (answered by the
    reader itself, at once, never behind a slow request) or ``barrier`` (it changes what the
    session is, who or which subscriptions: every later frame of the connection starts only once
    it is done, so a ``list`` after a ``subscribe`` sees the subscription in place); otherwise a
    request task beside the others."""

    type: str
    fields: tuple[tuple[str, Field], ...]
    before_auth: bool = False
    inline: bool = False
    barrier: bool = False

    def validate(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {name: validate(msg, name) for name, validate in self.fields}


H = TypeVar("H", bound=Callable[..., Any])


def message(
    type: str,
    *,
    before_auth: bool = False,
    inline: bool = False,
    barrier: bool = False,
    **fields: Field,
) -> Callable[[H], H]:
    """Declare the handler of message ``type`` with its fields beside it::

        @message("get", resource=required_text, id=required_text)
        async def get(self, conn, req): ...

    ``handlers.py`` builds its dispatch table from these declarations."""

    def declare(handler: H) -> H:
        declared = Message(type, tuple(fields.items()), before_auth, inline, barrier)
        handler.message = declared  # type: ignore[attr-defined]
        return handler

    return declare


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
        if isinstance(rid, str):
            return rid if len(rid) <= MAX_REQUEST_ID else None
        if isinstance(rid, int | float) and not isinstance(rid, bool):
            return rid
    return None


def parse(msg: Any, messages: Mapping[str, Message], *, custom: bool = False) -> Request:
    """Validate a decoded frame into a Request of one of ``messages``, or raise ProtocolError.
    With ``custom``, an undeclared type with a ``:`` is a custom type: its Request's ``fields``
    are ``{"message": the whole frame}`` (for the ``s3db_ws_message`` hook)."""
    if not isinstance(msg, dict):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            "a frame must be a JSON object",
            {"field": "", "message": "must be an object"},
        )
    rid = msg.get("requestId")
    if rid is not None and (type(rid) is bool or not isinstance(rid, str | int | float)):
        raise invalid("requestId", "must be a string or a number")  # see request_id_of
    if isinstance(rid, str) and len(rid) > MAX_REQUEST_ID:
        raise invalid("requestId", f"must be at most {MAX_REQUEST_ID} characters")
    kind = msg.get("type")
    if kind is None:
        raise invalid("type", "is required")
    if not isinstance(kind, str):
        raise invalid("type", "must be a string")
    declared = messages.get(kind)
    if declared is None and custom and ":" in kind and len(kind) <= CUSTOM_TYPE_MAX:
        return Request(kind, rid, {"message": msg})
    if declared is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_MESSAGE_TYPE,
            f"unknown message type {kind[:64]!r}",
            {"type": kind[:64], "known": sorted(messages)},
        )
    return Request(kind, rid, declared.validate(msg))


def now_ms() -> int:
    return int(time.time() * 1000)


def encode(frame: dict[str, Any]) -> bytes:
    """Serialize a server frame (orjson; the stdlib for the rare value orjson refuses)."""
    try:
        return orjson.dumps(frame)
    except TypeError:  # integers beyond 64 bits, or nested deeper than orjson goes
        try:
            return json.dumps(frame, default=str, ensure_ascii=False).encode()
        except RecursionError:
            raise ValueError("frame is nested too deeply to serialize") from None


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
