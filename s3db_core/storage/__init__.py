"""Storage clients: ``open_storage(url)`` picks the backend by URL scheme.

Backends are registered in the ``s3db.storage`` entry-point group (scheme -> factory), the
built-ins exactly like a third party's; a factory is loaded on first use and cached per scheme.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

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

GROUP = "s3db.storage"
_factories: dict[str, Callable[[str], StorageClient]] = {}


def open_storage(url: str) -> StorageClient:
    """A (not yet connected) storage client for ``url``, e.g. ``memory://demo``.

    Raises ValueError for an unknown scheme; the message names the scheme and the known ones,
    never the rest of the URL (it may hold credentials).
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    factory = _factories.get(scheme)
    if factory is None:
        found = entry_points(group=GROUP)
        matches = found.select(name=scheme)
        if not matches:
            known = ", ".join(sorted(set(found.names)))
            raise ValueError(f"unknown storage scheme {scheme!r} (known: {known})")
        factory = _factories[scheme] = next(iter(matches)).load()
    return factory(url)
