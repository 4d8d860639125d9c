"""Hook specifications of the ``s3db`` pluggy project.

Implementations may be plain functions or coroutines; the database awaits whatever they return.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("s3db")
hookimpl = pluggy.HookimplMarker("s3db")


@hookspec
def s3db_startup(db):
    """Fires when the database has connected (or when a plugin is added to a connected one)."""


@hookspec
def s3db_shutdown(db):
    """Fires when the database disconnects, before the store is closed."""


@hookspec
def s3db_resource_created(db, resource):
    """Fires after ``create_resource`` has registered a resource."""


@hookspec
def s3db_before_insert(resource, data):
    """Fires before an insert is validated; mutate ``data`` to change what is written, raise to veto."""


@hookspec
def s3db_before_update(resource, id, data, current):
    """Fires before an update is merged into ``current``; mutate ``data`` (the patch), raise to veto."""


@hookspec
def s3db_before_delete(resource, id, current):
    """Fires before a delete of the stored record ``current``; raise to veto."""


@hookspec
def s3db_change(change):
    """Fires after a write is durable, in commit order per resource; ``change`` is a ``Change``.

    Each implementation runs on its own: one that raises is logged with an ``error_id`` and the
    write still succeeds, and the other implementations still run."""
