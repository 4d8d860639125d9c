"""The seed's chat application: rooms, messages with history, typing indicators, JWT auth.

The page shows who is in a room and who is typing through a channel per room (``chat:<roomId>``,
presence plus a ``typing`` event; nothing stored). The seed's ``typing_indicators`` resource
stays, with its sweep, for the seed's own JavaScript client.

Resources, events and guards follow the "Chat Application" section of the seed. Where the seed's
guards leave a hole, these close it the way the seed's comments intend (README.md lists each
change): guards use the record the plugin already loaded (``ctx.record``), a missing room
never raises, and a private room refuses outsiders for every operation on its messages and
typing indicators (subscribe, list, get, insert).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from examples.common import Options, every, find_record, start_app
from examples.pages import example_page
from s3db_core import Change, Database, NotFoundError, hookimpl
from s3db_ws_plugin import RecheckOnAccessChange, WebSocketPlugin

TYPING_TTL = 5.0  # seconds a typing indicator lives (the seed's Date.now() + 5000)
CLEANUP_EVERY = 5.0  # seconds between sweeps of expired typing indicators (the seed's setInterval)
DELETE_BATCH = 32  # deletes in flight at once when a room's history is removed
CLIENT_MESSAGE_TYPES = ("text", "image", "file")  # "system" messages are the server's to write
Job = Callable[[], Awaitable[None]]


async def define_resources(db: Database) -> None:
    """The seed's three resources, field for field."""
    await db.create_resource(
        "chat_rooms",
        {
            "name": "string|required",
            "description": "string|optional",
            "isPrivate": "boolean|default:false",
            "members": "array|items:string|default:[]",
            "createdBy": "string|required",
        },
        timestamps=True,
    )
    await db.create_resource(
        "chat_messages",
        {
            "roomId": "string|required",
            "userId": "string|required",
            "username": "string|required",
            "content": "string|required|maxlength:4000",
            "type": "string|default:text",  # text, image, file, system
            "replyTo": "string|optional",
            "metadata": "json|optional",
        },
        timestamps=True,
        partitions={"byRoom": {"fields": {"roomId": "string"}}},
    )
    await db.create_resource(
        "typing_indicators",
        {
            "roomId": "string|required",
            "userId": "string|required",
            "username": "string|required",
            "expiresAt": "number|required",
        },
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def can_see(room: dict[str, Any] | None, user: Any) -> bool:
    """Public rooms are open to everyone signed in; private ones to their members only."""
    if room is None:
        return False
    return not room.get("isPrivate") or user.id in (room.get("members") or ())


def visible_or_missing(room: dict[str, Any] | None, user: Any) -> None:
    """Raise NotFoundError for a room ``user`` may not see: an outsider gets the same answer for
    a private room (or anything in it) as for an id that names nothing."""
    if room is not None and not can_see(room, user):
        raise NotFoundError("not found")


def display_name(user: Any) -> str:
    """The seed's ``user.name || user.email``, falling back to the id (username is required)."""
    return user.name or user.email or user.id


def resources_config(db: Database, *, typing_ttl: float = TYPING_TTL) -> dict[str, Any]:
    """The plugin's ``resources`` option: what each resource broadcasts and who may do what."""
    rooms = db.resources.chat_rooms

    async def room(room_id: Any) -> dict[str, Any] | None:
        # Only a plain id names a room: {"roomId": {"$in": [...]}} must not slip past the check.
        return await find_record(rooms, room_id)

    # -- chat_rooms --------------------------------------------------------------------------
    def rooms_visible(user: Any, filter: dict[str, Any]) -> bool | dict[str, Any]:
        # "Anyone can list public rooms"; a user also sees the private rooms they belong to by
        # asking for them ({"members[]": own id}). Anything else is narrowed to public rooms.
        if filter.get("members[]") == user.id:
            return True
        return {"isPrivate": False}

    def room_get(user: Any, ctx: Any) -> bool:
        visible_or_missing(ctx.record, user)
        return True  # missing -> NOT_FOUND

    def room_create(user: Any, data: dict[str, Any]) -> bool:
        data["createdBy"] = user.id
        invited = data.get("members")
        invited = invited if isinstance(invited, list) else []
        data["members"] = list(dict.fromkeys([user.id, *invited]))  # the creator is a member
        return True

    def room_update(user: Any, ctx: Any) -> bool:
        # Only the creator manages a room (e.g. invites members to a private one).
        if ctx.record is None:
            return True
        visible_or_missing(ctx.record, user)
        if ctx.record["createdBy"] != user.id:
            return False
        ctx.data.pop("createdBy", None)
        if "members" in ctx.data:
            if not isinstance(ctx.data["members"], list):
                return False
            ctx.data["members"] = list(dict.fromkeys([user.id, *ctx.data["members"]]))
        return True

    def room_delete(user: Any, ctx: Any) -> bool:
        visible_or_missing(ctx.record, user)
        return ctx.record is None or ctx.record["createdBy"] == user.id

    # -- chat_messages and typing_indicators: everything is decided by the room ---------------
    async def room_filter_allowed(user: Any, filter: dict[str, Any] | None) -> bool:
        # Without a roomId there is no room to check: refuse (the seed's `!filter?.roomId`).
        return can_see(await room((filter or {}).get("roomId")), user)

    async def in_room_list(user: Any, ctx: Any) -> bool:
        return await room_filter_allowed(user, ctx.filter)

    async def in_visible_room(user: Any, ctx: Any) -> None:
        # A record in a room the user may not see (private, or deleted) looks missing.
        if ctx.record is not None and not can_see(await room(ctx.record["roomId"]), user):
            raise NotFoundError("not found")

    async def in_room_get(user: Any, ctx: Any) -> bool:
        await in_visible_room(user, ctx)
        return True

    async def message_create(user: Any, data: dict[str, Any]) -> bool:
        if not can_see(await room(data.get("roomId")), user):
            return False
        if data.get("type", "text") not in CLIENT_MESSAGE_TYPES:
            return False
        data["userId"] = user.id  # the sender is who the token says, never what the client says
        data["username"] = display_name(user)
        return True

    async def message_update(user: Any, ctx: Any) -> bool:
        # Authors edit their own messages; room and author cannot be changed.
        if ctx.record is None:
            return True
        await in_visible_room(user, ctx)
        for field in ("roomId", "userId", "username", "type"):
            ctx.data.pop(field, None)
        return ctx.record["userId"] == user.id

    async def own_record(user: Any, ctx: Any) -> bool:
        await in_visible_room(user, ctx)
        return ctx.record is None or ctx.record["userId"] == user.id

    async def never_edited(user: Any, ctx: Any) -> bool:
        await in_visible_room(user, ctx)
        return ctx.record is None  # missing -> NOT_FOUND; indicators are re-inserted, never edited

    async def typing_create(user: Any, data: dict[str, Any]) -> bool:
        if not can_see(await room(data.get("roomId")), user):
            return False
        data["userId"] = user.id
        data["username"] = display_name(user)
        data["expiresAt"] = now_ms() + int(typing_ttl * 1000)
        return True

    return {
        "chat_rooms": {
            "events": ["insert", "update"],
            # Who may see a room at all, checked on every room that leaves the server: a room
            # made private reaches outsiders as `leave {id}`, never its new name or members.
            "read": {"$or": [{"isPrivate": False}, {"members[]": "$user.id"}]},
            "guard": {
                "list": lambda user, ctx: rooms_visible(user, ctx.filter or {}),
                "subscribe": rooms_visible,
                "get": room_get,
                "create": room_create,
                "update": room_update,
                "delete": room_delete,
            },
        },
        "chat_messages": {
            "events": ["insert"],
            # Newest first when a `list` names no order: the seed's ChatRoom asks for 50 messages
            # of history and reverses them, so it shows the latest 50 oldest-to-newest.
            "order": "desc",
            "guard": {
                "subscribe": room_filter_allowed,
                "list": in_room_list,
                "get": in_room_get,
                "create": message_create,
                "update": message_update,
                "delete": own_record,
            },
        },
        "typing_indicators": {
            "events": ["insert", "delete"],
            "guard": {
                "subscribe": room_filter_allowed,
                "list": in_room_list,
                "get": in_room_get,
                "create": typing_create,
                "update": never_edited,
                "delete": own_record,  # e.g. "stopped typing" when the message is sent
            },
        },
    }


ROOM_CHANNELS = "chat:*"  # one channel per room: chat:<roomId>


def channels_config(db: Database) -> dict[str, Any]:
    """The plugin's ``channels`` option: ``chat:<roomId>`` carries presence and ``typing``
    events; only someone who may see the room joins it (an outsider of a private room, or a
    room that does not exist, gets the same ``FORBIDDEN``)."""

    async def may_join(user: Any, ctx: Any) -> bool:
        room_id = ctx.channel.split(":", 1)[1]
        return can_see(await find_record(db.resources.chat_rooms, room_id), user)

    return {ROOM_CHANNELS: {"join": may_join, "presence": True, "events": ["typing"]}}


async def delete_expired_typing(db: Database) -> int:
    """The seed's cleanup: delete every typing indicator whose ``expiresAt`` has passed."""
    indicators = db.resources.typing_indicators
    deleted = 0
    for indicator in await indicators.query({"expiresAt": {"$lt": now_ms()}}):
        try:
            await indicators.delete(indicator["id"])
        except NotFoundError:  # its owner deleted it meanwhile
            continue
        deleted += 1
    return deleted


class RoomHistory:
    """Deleting a room deletes its messages and typing indicators, so nothing of it can be
    inherited by a room created later (whatever its id). Runs after the room's delete is
    durable; the message create guard already refuses a room that no longer exists."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @hookimpl
    async def s3db_change(self, change: Change) -> None:
        if change.resource != "chat_rooms" or change.event != "delete":
            return
        room_id = change.record["id"]
        for name in ("chat_messages", "typing_indicators"):
            resource = self.db.resources[name]
            records = await resource.query({"roomId": room_id})
            for start in range(0, len(records), DELETE_BATCH):
                batch = records[start : start + DELETE_BATCH]
                results = await asyncio.gather(
                    *(resource.delete(r["id"]) for r in batch), return_exceptions=True
                )
                for result in results:  # already gone (its author deleted it) is fine
                    if isinstance(result, BaseException) and not isinstance(result, NotFoundError):
                        raise result


async def ensure_lobby(db: Database) -> None:
    """Give a fresh store one public room to start in (the demo's; tests start empty)."""
    if await db.resources.chat_rooms.count() == 0:
        await db.resources.chat_rooms.insert(
            {"name": "general", "description": "Say hi!", "createdBy": "system"}
        )


def page_routes(options: Options) -> list[web.AbstractRouteDef]:
    """The chat page at ``/`` and, with ``--dev``, the passwordless login (DEV ONLY)."""
    return example_page(__file__, options, old_path="/chat")


async def create_app(
    options: Options,
    *,
    typing_ttl: float = TYPING_TTL,
    cleanup_every: float = CLEANUP_EVERY,
) -> tuple[Database, WebSocketPlugin, list[Job]]:
    """Connect the database, define the resources and start serving them on ``options.port``.

    Returns the database, the running plugin and the background jobs to run (the cleanup).
    """

    async def make_plugin(db: Database) -> WebSocketPlugin:
        return WebSocketPlugin(
            port=options.port,
            host=options.host,
            auth={"required": True, "drivers": [{"driver": "jwt", "config": {"secret": options.jwt_secret}}]},
            resources=resources_config(db, typing_ttl=typing_ttl),
            channels=channels_config(db),
            routes=page_routes(options),
        )

    # A member removed from a private room (or a room made private, or deleted) stops
    # receiving its messages and typing indicators at once.
    def access(db: Database, plugin: WebSocketPlugin) -> list[object]:
        room_fields = ("members", "isPrivate")
        dependents = {"chat_messages": "roomId", "typing_indicators": "roomId"}
        # Deleting a room deletes its history, so no later room inherits it.
        return [RoomHistory(db), RecheckOnAccessChange(plugin, "chat_rooms", room_fields, dependents)]

    db, plugin = await start_app(options, define_resources, make_plugin, after=access)

    async def cleanup() -> None:
        await delete_expired_typing(db)

    return db, plugin, [every(cleanup_every, cleanup)]
