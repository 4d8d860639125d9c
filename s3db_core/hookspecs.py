"""Hook specifications of the ``s3db`` pluggy project.

Implementations may be plain functions or coroutines; the database awaits whatever they return.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .change import Change
    from .database import Database
    from .resource import Resource

hookspec = pluggy.HookspecMarker("s3db")
hookimpl = pluggy.HookimplMarker("s3db")


@hookspec
def s3db_startup(db: Database) -> Any:
    """Fires when the database has connected (or when a plugin is added to a connected one)."""


@hookspec
def s3db_shutdown(db: Database) -> Any:
    """Fires when the database disconnects, before the store is closed."""


@hookspec
def s3db_resource_created(db: Database, resource: Resource) -> Any:
    """Fires after ``create_resource`` has registered a resource."""


@hookspec
def s3db_before_insert(resource: Resource, data: dict[str, Any]) -> Any:
    """Fires before an insert is validated; mutate ``data`` to change what is written, raise to veto."""


@hookspec
def s3db_before_update(
    resource: Resource, id: str, data: dict[str, Any], current: dict[str, Any]
) -> Any:
    """Fires before an update is merged into ``current``; mutate ``data`` (the patch), raise to veto."""


@hookspec
def s3db_before_delete(resource: Resource, id: str, current: dict[str, Any]) -> Any:
    """Fires before a delete of the stored record ``current``; raise to veto."""


@hookspec
def s3db_change(change: Change) -> Any:
    """Fires after a write is durable, in commit order per resource; ``change`` is a ``Change``.

    Each implementation runs on its own: one that raises is logged with an ``error_id`` and the
    write still succeeds, and the other implementations still run."""
