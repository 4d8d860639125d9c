"""The seed's live notifications: the server pushes each user their own notifications.

The guards are the seed's: a subscription and a list are pinned to the user's own id by the
dict they return (a client cannot widen them: ``{"userId": "someone-else"}`` is overridden),
anyone may create a notification (the system creates them, ``send_notification``), and users
mark their own as read. Where the seed leaves an operation open, this closes it the way its
comments intend (README.md lists each change): ``get`` and ``delete`` are for the recipient only,
and an update may change only ``read`` (a notification cannot be handed to another user).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from examples.common import Options, start_app
from s3db_core import Database, ForbiddenError
from s3db_ws_plugin import WebSocketPlugin

READER_FIELDS = frozenset({"read"})  # what a recipient may change on a notification
Job = Callable[[], Awaitable[None]]


async def define_resources(db: Database) -> None:
    await db.create_resource(
        "notifications",
        {
            "userId": "string|required",
            "type": "string|required|maxlength:50",  # message, mention, system, ...
            "title": "string|required|maxlength:200",
            "body": "string|optional|maxlength:2000",
            "data": "json|optional",
            "read": "boolean|default:false",
        },
        timestamps=True,
        partitions={"byUser": {"fields": {"userId": "string"}}},
    )


def is_recipient(user: Any, ctx: Any) -> bool:
    return ctx.record is not None and ctx.record["userId"] == user.id


def mark_read(user: Any, ctx: Any) -> bool:
    """Users can mark their own as read (and nothing else)."""
    if not is_recipient(user, ctx):
        return False
    other = sorted(set(ctx.data) - READER_FIELDS)
    if other:
        raise ForbiddenError(f"only 'read' can be changed, not {other[0]!r}")
    return True


def resources_config() -> dict[str, Any]:
    """The plugin's ``resources`` option."""
    return {
        "notifications": {
            "events": ["insert", "update"],
            "guard": {
                # Users can only subscribe to their own notifications.
                "subscribe": lambda user, filter: {**filter, "userId": user.id},
                "list": lambda user, ctx: {"userId": user.id},
                "get": is_recipient,
                # Anyone can create (system creates them).
                "create": lambda user, data: True,
                "update": mark_read,
                "delete": is_recipient,
            },
        }
    }


async def send_notification(db: Database, user_id: str, notification: dict[str, Any]) -> dict[str, Any]:
    """The seed's helper: store an unread notification for ``user_id`` (pushed to them live).

        await send_notification(db, "user-123", {
            "type": "message", "title": "New message",
            "body": "John sent you a message", "data": {"messageId": "msg-456"},
        })
    """
    record = {"userId": user_id, "type": notification["type"], "title": notification["title"]}
    for optional in ("body", "data"):  # like JSON.stringify, a missing value is left out
        if notification.get(optional) is not None:
            record[optional] = notification[optional]
    return await db.resources.notifications.insert({**record, "read": False})


SEED_USAGE = ("user-123", {
    "type": "message",
    "title": "New message",
    "body": "John sent you a message",
    "data": {"messageId": "msg-456"},
})


async def send_seed_notification(db: Database) -> None:
    """The seed's usage example (the demo repeats it so a connected client sees one arrive)."""
    user_id, notification = SEED_USAGE
    await send_notification(db, user_id, notification)


async def create_app(options: Options) -> tuple[Database, WebSocketPlugin, list[Job]]:
    """Connect the database, define the resource and serve it on ``options.port``.

    Returns the database, the running plugin and the background jobs (none: the application
    calls ``send_notification`` when something happens).
    """

    async def make_plugin(db: Database) -> WebSocketPlugin:
        return WebSocketPlugin(
            port=options.port,
            host=options.host,
            auth={"required": True, "drivers": [{"driver": "jwt", "config": {"secret": options.jwt_secret}}]},
            resources=resources_config(),
        )

    db, plugin = await start_app(options, define_resources, make_plugin)
    return db, plugin, []
