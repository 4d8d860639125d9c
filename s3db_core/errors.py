"""Typed errors raised by the core. Messages name fields and limits, never credentials."""

from __future__ import annotations

from typing import Any


class S3dbError(Exception):
    """Base class of every error the core raises on purpose."""

    code = "INTERNAL_ERROR"


class NotFoundError(S3dbError):
    """A record (or resource) that does not exist."""

    code = "NOT_FOUND"


class ForbiddenError(S3dbError):
    """Raised by guards to refuse an operation."""

    code = "FORBIDDEN"


class ValidationError(S3dbError):
    """A record failed its schema. `errors` lists every failing field."""

    code = "VALIDATION_ERROR"

    def __init__(self, errors: list[dict[str, Any]], message: str | None = None) -> None:
        self.errors = errors
        if message is None:
            message = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid"
        super().__init__(message)


class ConflictError(S3dbError):
    """A duplicate id on insert, or an update that lost its race too many times."""

    code = "CONFLICT"


class StorageError(S3dbError):
    """The store is unreachable or failed. The message names the endpoint, never credentials."""

    code = "STORAGE_ERROR"


class DamagedRecordError(StorageError):
    """A stored object that cannot be read back as a record (truncated, not ours, corrupt).
    ``key`` names it; ``get`` raises this, listings skip the object and count it."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


class UnsupportedStoreError(S3dbError):
    """The store holds data this version cannot safely open (an ``s3db.json`` written by
    another program, such as s3db.js). Raised by ``connect`` before anything is written; the
    message says what was found and what to do."""

    code = "UNSUPPORTED_STORE"
