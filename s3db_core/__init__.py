"""s3db core: a document database whose records live in S3 (or a memory/file store)."""

from .brokers import Position
from .change import Change
from .compat import IncompatibleSchemaError
from .database import Database, Resources
from .errors import (
    ConflictError,
    DamagedRecordError,
    ForbiddenError,
    NotFoundError,
    S3dbError,
    StorageError,
    UnsupportedStoreError,
    ValidationError,
)
from .hookspecs import hookimpl
from .limits import Limits
from .plugins import await_me_maybe
from .resource import Page, Resource, Stats, Versioned

__all__ = [
    "Change",
    "ConflictError",
    "DamagedRecordError",
    "Database",
    "ForbiddenError",
    "IncompatibleSchemaError",
    "Limits",
    "NotFoundError",
    "Page",
    "Position",
    "Resource",
    "Resources",
    "S3dbError",
    "Stats",
    "StorageError",
    "UnsupportedStoreError",
    "ValidationError",
    "Versioned",
    "await_me_maybe",
    "hookimpl",
]
