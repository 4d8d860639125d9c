"""The errors the client raises: one ``ClientError`` subclass per server error code, plus the
client's own (``ConnectionLost``, ``RequestTimeout``, ``SlowConsumer``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


# -- errors ------------------------------------------------------------------------------------
class ClientError(Exception):
    """An error reply from the server (or a client-side failure): ``code``, ``details``,
    ``request_id`` and the server's ``message``."""

    code = "CLIENT_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        request_id: str | int | None = None,
        frame: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details = details
        self.request_id = request_id
        self.frame = dict(frame or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidJSON(ClientError):
    code = "INVALID_JSON"


class InvalidMessage(ClientError):
    """A missing or ill-typed field; ``details`` names it."""

    code = "INVALID_MESSAGE"


class UnknownMessageType(ClientError):
    code = "UNKNOWN_MESSAGE_TYPE"


class Unauthorized(ClientError):
    """Invalid or expired credentials (the server closes the socket with 4401)."""

    code = "UNAUTHORIZED"


class Forbidden(ClientError):
    code = "FORBIDDEN"


class ResourceNotFound(ClientError):
    """The resource is not exposed by the server."""

    code = "RESOURCE_NOT_FOUND"


class NotFound(ClientError):
    """No record with that id (revealed only to users the guard allows)."""

    code = "NOT_FOUND"


class ValidationFailed(ClientError):
    """The record failed the schema; ``errors`` (= ``details``) lists every failing field."""

    code = "VALIDATION_ERROR"

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self.details or [])


class Conflict(ClientError):
    code = "CONFLICT"


class RateLimited(ClientError):
    """Too many frames; retry after ``retry_after_ms``."""

    code = "RATE_LIMITED"

    @property
    def retry_after_ms(self) -> int | None:
        return self.frame.get("retryAfterMs")


class InternalError(ClientError):
    """A server bug; quote ``error_id`` when reporting it."""

    code = "INTERNAL_ERROR"

    @property
    def error_id(self) -> str | None:
        return self.frame.get("errorId")


class ConnectionLost(ClientError):
    """The socket could not be opened, or dropped before the reply arrived, or the client was
    closed. A request that raises this may or may not have been executed."""

    code = "CONNECTION_LOST"


class RequestTimeout(ClientError):
    """No reply within ``request_timeout`` seconds."""

    code = "TIMEOUT"


class SlowConsumer(ClientError):
    """A subscription's reader fell ``max_pending`` events behind. The iterator still yields
    every event it buffered, then raises this; the subscription is closed (never a silent drop,
    like the server's 4408). Read faster, or subscribe again and catch up with ``list``."""

    code = "SLOW_CONSUMER"


ERRORS: dict[str, type[ClientError]] = {
    cls.code: cls
    for cls in (
        InvalidJSON,
        InvalidMessage,
        UnknownMessageType,
        Unauthorized,
        Forbidden,
        ResourceNotFound,
        NotFound,
        ValidationFailed,
        Conflict,
        RateLimited,
        InternalError,
    )
}


def error_from_frame(frame: Mapping[str, Any]) -> ClientError:
    """The typed exception for an ``error`` frame."""
    code = str(frame.get("code") or "CLIENT_ERROR")
    cls = ERRORS.get(code, ClientError)
    return cls(
        str(frame.get("message") or code),
        code=code,
        details=frame.get("details"),
        request_id=frame.get("requestId"),
        frame=frame,
    )
