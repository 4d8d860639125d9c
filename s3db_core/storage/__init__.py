"""Storage clients: ``open_storage(url)`` picks the backend by URL scheme.

Backends are registered in the ``s3db.storage`` entry-point group (scheme -> factory), the
built-ins exactly like a third party's, loaded by ``s3db_core.plugins.load_entry_point``.
"""

from __future__ import annotations

from s3db_core.plugins import load_entry_point
from s3db_core.storage.base import (
    ListPage,
    ObjectNotFound,
    PreconditionFailed,
    RequestCounter,
    StorageClient,
    StoredObject,
)

__all__ = [
    "ListPage",
    "ObjectNotFound",
    "PreconditionFailed",
    "RequestCounter",
    "StorageClient",
    "StoredObject",
    "open_storage",
]

ENTRY_POINT_GROUP = "s3db.storage"


def open_storage(url: str) -> StorageClient:
    """A (not yet connected) storage client for ``url``, e.g. ``memory://demo``.

    Raises ValueError for an unknown scheme; the message names the scheme and the known ones,
    never the rest of the URL (it may hold credentials).
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    client: StorageClient = load_entry_point(ENTRY_POINT_GROUP, scheme, kind="storage scheme")(url)
    return client
