"""The seed's chat application: rooms, messages with history, typing indicators, JWT auth.

Resources, events and guards follow the "Chat Application" section of the seed. Where the seed's
guards leave a hole, these close it the way the seed's comments intend (README.md lists each
change): guards use the record the plugin already loaded (``ctx.record``), a missing room
never raises, and a private room refuses outsiders for every operation on its messages and
typing indicators (subscribe, list, get, insert).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from examples.common import Options, dev_login_route, every, find_record, start_app
from s3db_core import Database, NotFoundError
from s3db_ws_plugin import RecheckOnAccessChange, WebSocketPlugin

STATIC = Path(__file__).parent / "static"
TYPING_TTL = 5.0  # seconds a typing indicator lives (the seed's Date.now() + 5000)
CLEANUP_EVERY = 5.0  # seconds between sweeps of expired typing indicators (the seed's setInterval)
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
        return ctx.record is None or can_see(ctx.record, user)  # missing -> NOT_FOUND

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
        if ctx.record["createdBy"] != user.id:
            return False
        ctx.data.pop("createdBy", None)
        if "members" in ctx.data:
            if not isinstance(ctx.data["members"], list):
                return False
            ctx.data["members"] = list(dict.fromkeys([user.id, *ctx.data["members"]]))
        return True

    def room_delete(user: Any, ctx: Any) -> bool:
        return ctx.record is None or ctx.record["createdBy"] == user.id

    # -- chat_messages and typing_indicators: everything is decided by the room ---------------
    async def room_filter_allowed(user: Any, filter: dict[str, Any] | None) -> bool:
        # Without a roomId there is no room to check: refuse (the seed's `!filter?.roomId`).
        return can_see(await room((filter or {}).get("roomId")), user)

    async def in_room_list(user: Any, ctx: Any) -> bool:
        return await room_filter_allowed(user, ctx.filter)

    async def in_room_get(user: Any, ctx: Any) -> bool:
        return ctx.record is None or can_see(await room(ctx.record["roomId"]), user)

    async def message_create(user: Any, data: dict[str, Any]) -> bool:
        if not can_see(await room(data.get("roomId")), user):
            return False
        if data.get("type", "text") not in CLIENT_MESSAGE_TYPES:
            return False
        data["userId"] = user.id  # the sender is who the token says, never what the client says
        data["username"] = display_name(user)
        return True

    def message_update(user: Any, ctx: Any) -> bool:
        # Authors edit their own messages; room and author cannot be changed.
        if ctx.record is None:
            return True
        for field in ("roomId", "userId", "username", "type"):
            ctx.data.pop(field, None)
        return ctx.record["userId"] == user.id

    def own_record(user: Any, ctx: Any) -> bool:
        return ctx.record is None or ctx.record["userId"] == user.id

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
                "update": lambda user, ctx: False,  # indicators are re-inserted, never edited
                "delete": own_record,  # e.g. "stopped typing" when the message is sent
            },
        },
    }


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


async def ensure_lobby(db: Database) -> None:
    """Give a fresh store one public room to start in (the demo's; tests start empty)."""
    if await db.resources.chat_rooms.count() == 0:
        await db.resources.chat_rooms.insert(
            {"name": "general", "description": "Say hi!", "createdBy": "system"}
        )


def page_routes(secret: str) -> list[web.AbstractRouteDef]:
    """The chat page, its assets, and the DEVELOPMENT-ONLY login (name -> JWT)."""

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "chat.html")

    return [
        web.get("/chat", page),
        web.static("/chat/static", STATIC),
        dev_login_route(secret),
    ]


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
            routes=page_routes(options.jwt_secret),
        )

    # A member removed from a private room (or a room made private, or deleted) stops
    # receiving its messages and typing indicators at once.
    def access(db: Database, plugin: WebSocketPlugin) -> list[object]:
        room_fields = ("members", "isPrivate")
        dependents = {"chat_messages": "roomId", "typing_indicators": "roomId"}
        return [RecheckOnAccessChange(plugin, "chat_rooms", room_fields, dependents)]

    db, plugin = await start_app(options, define_resources, make_plugin, after=access)

    async def cleanup() -> None:
        await delete_expired_typing(db)

    return db, plugin, [every(cleanup_every, cleanup)]
