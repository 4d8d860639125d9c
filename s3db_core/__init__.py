"""s3db core: a document database whose records live in S3 (or a memory/file store)."""

from .brokers import Position
from .change import Change
from .database import Database, Resources
from .errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    S3dbError,
    StorageError,
    ValidationError,
)
from .hookspecs import hookimpl
from .plugins import await_me_maybe
from .resource import Page, Resource, Versioned

__all__ = [
    "Change",
    "ConflictError",
    "Database",
    "ForbiddenError",
    "NotFoundError",
    "Page",
    "Position",
    "Resource",
    "Resources",
    "S3dbError",
    "StorageError",
    "ValidationError",
    "Versioned",
    "await_me_maybe",
    "hookimpl",
]
