"""The seed's multi-tenant SaaS: strict tenant isolation for projects and tasks.

Every user's JWT carries a ``tenantId`` claim. Every operation on ``projects`` and ``tasks`` is
pinned to it, with the seed's guards: subscriptions and lists get the tenant forced into their
filter (a dict return that the client cannot widen), reads and writes of a record need the
record's tenant to be the user's (``ctx.record``, the record the plugin loaded), new records
are stamped with the user's tenant and id, and only admins delete. ``tasks`` follow "the same
pattern as projects" (the seed's ``// ... other guards``), and a task may only point at a
project of the same tenant. Where the seed's guards leave a hole, these close it (README.md
lists each change): an update cannot move a record to another tenant, and a token without a
``tenantId`` claim is refused everything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from examples.common import Options, find_record, start_app
from s3db_core import Database, ForbiddenError
from s3db_ws_plugin import WebSocketPlugin

ADMIN_ROLE = "admin"
STAMPED = ("tenantId", "createdBy")  # set by the server on create, never changed afterwards
Job = Callable[[], Awaitable[None]]


async def define_resources(db: Database) -> None:
    by_tenant = {"byTenant": {"fields": {"tenantId": "string"}}}
    await db.create_resource(
        "projects",
        {
            "tenantId": "string|required",
            "name": "string|required|maxlength:200",
            "description": "string|optional|maxlength:2000",
            "status": "string|enum:active,archived|default:active",
            "createdBy": "string|required",
        },
        timestamps=True,
        partitions=by_tenant,
    )
    await db.create_resource(
        "tasks",
        {
            "tenantId": "string|required",
            "projectId": "string|required",
            "title": "string|required|maxlength:200",
            "done": "boolean|default:false",
            "assigneeId": "string|optional",
            "createdBy": "string|required",
        },
        timestamps=True,
        partitions=by_tenant,
    )


def tenant_of(user: Any) -> str:
    """The user's tenant; a token without one may do nothing at all."""
    tenant = user.tenantId
    if not isinstance(tenant, str) or not tenant:
        raise ForbiddenError("this token has no tenantId claim")
    return tenant


def same_tenant(user: Any, ctx: Any) -> bool:
    tenant = tenant_of(user)
    return ctx.record is not None and ctx.record["tenantId"] == tenant


def tenant_guards(*, check_create: Callable[[Any, dict[str, Any]], Awaitable[bool]] | None = None,
                  check_update: Callable[[Any, Any], Awaitable[bool]] | None = None) -> dict[str, Any]:
    """The seed's guards for one resource; ``check_*`` add the resource's own rules."""

    def subscribe(user: Any, filter: dict[str, Any]) -> dict[str, Any]:
        return {**filter, "tenantId": tenant_of(user)}

    def list_(user: Any, ctx: Any) -> dict[str, Any]:
        return {"tenantId": tenant_of(user)}

    async def create(user: Any, data: dict[str, Any]) -> bool:
        data["tenantId"] = tenant_of(user)
        data["createdBy"] = user.id
        return check_create is None or await check_create(user, data)

    async def update(user: Any, ctx: Any) -> bool:
        if not same_tenant(user, ctx):
            return False
        for field in STAMPED:
            ctx.data.pop(field, None)  # a record never changes tenant (or creator)
        return check_update is None or await check_update(user, ctx)

    def delete(user: Any, ctx: Any) -> bool:
        return same_tenant(user, ctx) and user.role == ADMIN_ROLE

    return {
        # All operations filtered by tenant
        "subscribe": subscribe,
        "list": list_,
        "get": same_tenant,
        "create": create,
        "update": update,
        "delete": delete,
    }


def resources_config(db: Database) -> dict[str, Any]:
    """The plugin's ``resources`` option."""
    projects = db.resources.projects

    async def project_in_tenant(user: Any, project_id: Any) -> bool:
        project = await find_record(projects, project_id)
        return project is not None and project["tenantId"] == tenant_of(user)

    async def task_create(user: Any, data: dict[str, Any]) -> bool:
        return await project_in_tenant(user, data.get("projectId"))

    async def task_update(user: Any, ctx: Any) -> bool:
        return "projectId" not in ctx.data or await project_in_tenant(user, ctx.data["projectId"])

    return {
        "projects": {"guard": tenant_guards()},
        # Same pattern as projects
        "tasks": {"guard": tenant_guards(check_create=task_create, check_update=task_update)},
    }


async def create_app(options: Options) -> tuple[Database, WebSocketPlugin, list[Job]]:
    """Connect the database, define the resources and serve them on ``options.port``.

    Returns the database, the running plugin and the background jobs (none).
    """

    async def make_plugin(db: Database) -> WebSocketPlugin:
        return WebSocketPlugin(
            port=options.port,
            host=options.host,
            auth={"required": True, "drivers": [{"driver": "jwt", "config": {"secret": options.jwt_secret}}]},
            resources=resources_config(db),
        )

    db, plugin = await start_app(options, define_resources, make_plugin)
    return db, plugin, []
