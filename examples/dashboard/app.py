"""The seed's real-time dashboard: metrics and alerts streamed to admins and viewers.

Resources, events and guards follow the "Real-time Dashboard" section of the seed, with one
decision the seed leaves open (README.md explains it): its ``collector`` and ``system`` roles
are blocked by the resources' role list ``auth: ['admin', 'viewer']``, which is checked before
any guard. Here the role lists admit the writers too, and the guards keep reading (subscribe,
list, get) to admins and viewers, so a collector can write metrics but never read them.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from examples.common import Options, dev_login_route, every, start_app
from s3db_core import Database
from s3db_ws_plugin import WebSocketPlugin

STATIC = Path(__file__).parent / "static"
METRIC_EVERY = 5.0  # seconds between simulated samples (the seed's setInterval(..., 5000))
CPU_ALERT_PERCENT = 90.0  # a simulated CPU sample above this raises a warning alert
READERS = ("admin", "viewer")
Job = Callable[[], Awaitable[None]]


async def define_resources(db: Database) -> None:
    """The seed's two resources, field for field."""
    await db.create_resource(
        "metrics",
        {
            "type": "string|required",  # cpu, memory, requests, errors
            "value": "number|required",
            "unit": "string|required",
            "host": "string|required",
            "tags": "json|optional",
        },
        timestamps=True,
        partitions={"byType": {"fields": {"type": "string"}}},
    )
    await db.create_resource(
        "alerts",
        {
            "severity": "string|required",  # critical, warning, info
            "message": "string|required",
            "source": "string|required",
            "acknowledged": "boolean|default:false",
            "acknowledgedBy": "string|optional",
            "resolvedAt": "string|optional",
        },
        timestamps=True,
    )


def is_reader(user: Any, *_: Any) -> bool:
    """Admins and viewers read metrics and alerts; writer roles (collector, system) do not."""
    return user.role in READERS


def is_admin(user: Any, *_: Any) -> bool:
    return user.role == "admin"


def alert_create(user: Any, data: dict[str, Any]) -> bool:
    # A new alert is open: nobody acknowledges it on someone else's behalf at creation.
    data["acknowledged"] = False
    data.pop("acknowledgedBy", None)
    return user.role in ("admin", "system")


def alert_update(user: Any, ctx: Any) -> bool:
    """Only admins can acknowledge; ``acknowledgedBy`` is who did it, never what was sent."""
    if user.role != "admin":
        return False
    ctx.data.pop("acknowledgedBy", None)
    if "acknowledged" in ctx.data:
        ctx.data["acknowledgedBy"] = user.id if ctx.data["acknowledged"] else None
    return True


RESOURCES: dict[str, Any] = {
    "metrics": {
        "auth": ["admin", "viewer", "collector"],
        "events": ["insert"],
        "guard": {
            "subscribe": is_reader,
            "list": is_reader,
            "get": is_reader,
            # Viewers read, they do not write; collectors write, they do not read.
            "create": lambda user, data: user.role in ("admin", "collector"),
            "update": lambda user, ctx: False,  # a sample is a measurement: never edited
            "delete": is_admin,
        },
    },
    "alerts": {
        "auth": ["admin", "viewer", "system"],
        "events": ["insert", "update"],
        "guard": {
            "subscribe": is_reader,
            "list": is_reader,
            "get": is_reader,
            "create": alert_create,
            "update": alert_update,
            "delete": is_admin,
        },
    },
}


async def collect_metrics(
    db: Database, *, host: str = "server-1", sample: Callable[[], float] = random.random
) -> None:
    """The seed's simulation: one CPU and one memory sample; a CPU spike also raises an alert.

    ``sample`` draws from [0, 1), like the seed's ``Math.random()``.
    """
    cpu = sample() * 100
    await db.resources.metrics.insert({"type": "cpu", "value": cpu, "unit": "percent", "host": host})
    await db.resources.metrics.insert(
        {"type": "memory", "value": sample() * 16384, "unit": "MB", "host": host}
    )
    if cpu > CPU_ALERT_PERCENT:
        await db.resources.alerts.insert(
            {"severity": "warning", "message": f"CPU at {cpu:.0f}% on {host}", "source": host}
        )


def page_routes(secret: str) -> list[web.AbstractRouteDef]:
    """The dashboard page, its assets, and the DEVELOPMENT-ONLY login (name + role -> JWT)."""

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "dashboard.html")

    return [
        web.get("/dashboard", page),
        web.static("/dashboard/static", STATIC),
        dev_login_route(secret, allowed_roles=("viewer", "admin")),
    ]


async def create_app(
    options: Options, *, metric_every: float = METRIC_EVERY
) -> tuple[Database, WebSocketPlugin, list[Job]]:
    """Connect the database, define the resources and start serving them on ``options.port``.

    Returns the database, the running plugin and the background jobs (the metric simulation).
    """

    async def make_plugin(db: Database) -> WebSocketPlugin:
        return WebSocketPlugin(
            port=options.port,
            host=options.host,
            auth={"required": True, "drivers": [{"driver": "jwt", "config": {"secret": options.jwt_secret}}]},
            resources=RESOURCES,
            routes=page_routes(options.jwt_secret),
        )

    db, plugin = await start_app(options, define_resources, make_plugin)

    async def simulate() -> None:
        await collect_metrics(db)

    return db, plugin, [every(metric_every, simulate)]
