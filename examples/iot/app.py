"""The seed's IoT data streaming: devices write sensor readings, their owners watch them live.

Devices sign in with an API key (the ``apiKey`` driver), people with a JWT (the ``jwt`` driver),
tried in the seed's order. The seed's ``loadDeviceApiKeys()`` is ``load_device_api_keys``: the
keys come from the ``devices`` resource (``id``, ``ownerId``, ``apiKey``, ``name``) and are read
once, at start-up; a device registered later (``register_device``) can connect after the next
restart. ``apiKey`` is protected: it never leaves the server.

The guards are the seed's (a device writes readings for itself only: the guard overrides
``deviceId``; devices cannot subscribe; people subscribe to the devices they own), plus the same
owner rule for listing and reading readings, read-only access to one's own devices, and
immutable readings (README.md lists each choice). The rate limit is the seed's: 1000 frames a
minute per connection.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from examples.common import Options, find_record, start_app
from s3db_core import Database, ForbiddenError
from s3db_ws_plugin import WebSocketPlugin
from s3db_ws_plugin.client import Client, ClientError

log = structlog.get_logger("s3db.examples.iot")

DEVICE_ROLE = "device"
RATE_LIMIT = {"enabled": True, "max_requests": 1000, "window_ms": 60000}  # 1000 readings a minute
Job = Callable[[], Awaitable[None]]


async def define_resources(db: Database) -> None:
    await db.create_resource(
        "devices",
        {
            "name": "string|required|maxlength:100",
            "ownerId": "string|required",
            "apiKey": "secret|required|minlength:32",  # protected: never sent to a client
        },
        timestamps=True,
    )
    await db.create_resource(
        "sensor_readings",
        {
            "deviceId": "string|required",
            "sensor": "string|required|maxlength:50",  # temperature, humidity, ...
            "value": "number|required",
            "unit": "string|optional|maxlength:20",
        },
        timestamps=True,
        partitions={"byDevice": {"fields": {"deviceId": "string"}}},
    )


async def register_device(db: Database, owner_id: str, name: str) -> dict[str, Any]:
    """Provision a device for ``owner_id`` with a fresh API key (usable after a restart)."""
    return await db.resources.devices.insert(
        {"name": name, "ownerId": owner_id, "apiKey": secrets.token_urlsafe(32)}
    )


async def load_device_api_keys(db: Database) -> dict[str, dict[str, Any]]:
    """The seed's ``loadDeviceApiKeys()``: ``{api key: device user}`` for the apiKey driver.

    A device signs in as the user ``{"id": device id, "role": "device", "ownerId", "name"}``.
    """
    return {
        device["apiKey"]: {
            "id": device["id"],
            "role": DEVICE_ROLE,
            "ownerId": device["ownerId"],
            "name": device["name"],
        }
        for device in await db.resources.devices.query()
    }


def resources_config(db: Database) -> dict[str, Any]:
    """The plugin's ``resources`` option: what each resource broadcasts and who may do what."""
    devices = db.resources.devices

    async def owns_device(user: Any, filter: dict[str, Any] | None) -> dict[str, Any] | bool:
        """Users see the readings of one device they own; devices see none."""
        if user.role == DEVICE_ROLE:
            return False
        device_id = (filter or {}).get("deviceId")
        if not isinstance(device_id, str):
            raise ForbiddenError("name one of your devices: filter {'deviceId': <device id>}")
        device = await find_record(devices, device_id)
        return {"deviceId": device_id} if device is not None and device["ownerId"] == user.id else False

    # -- sensor_readings ---------------------------------------------------------------------
    def reading_create(user: Any, data: dict[str, Any]) -> bool:
        # Devices can only write to their own sensor.
        if user.role == DEVICE_ROLE:
            data["deviceId"] = user.id
            return True
        return False

    async def reading_get(user: Any, ctx: Any) -> bool:
        if ctx.record is None:
            return False
        if user.role == DEVICE_ROLE:
            return ctx.record["deviceId"] == user.id
        device = await find_record(devices, ctx.record["deviceId"])
        return device is not None and device["ownerId"] == user.id

    # -- devices: provisioned by the operator, readable by their owners ----------------------
    def device_list(user: Any, ctx: Any) -> dict[str, Any] | bool:
        if user.role == DEVICE_ROLE:
            return False
        return {"ownerId": user.id}

    def device_get(user: Any, ctx: Any) -> bool:
        if user.role == DEVICE_ROLE or ctx.record is None:
            return False
        return ctx.record["ownerId"] == user.id

    def provisioned_only(user: Any, arg: Any) -> bool:
        raise ForbiddenError("devices are provisioned by the operator (register_device), not over the socket")

    return {
        "sensor_readings": {
            "events": ["insert"],
            "guard": {
                "create": reading_create,
                # Users can subscribe to devices they own.
                "subscribe": owns_device,
                "list": lambda user, ctx: owns_device(user, ctx.filter),
                "get": reading_get,
                "update": lambda user, ctx: False,  # a reading is a fact: never rewritten
                "delete": lambda user, ctx: False,
            },
        },
        "devices": {
            "events": [],
            "protected": ["apiKey"],
            "guard": {
                "list": device_list,
                "get": device_get,
                "subscribe": lambda user, filter: False,
                "create": provisioned_only,
                "update": provisioned_only,
                "delete": provisioned_only,
            },
        },
    }


async def create_app(options: Options) -> tuple[Database, WebSocketPlugin, list[Job]]:
    """Connect the database, load the device keys and serve the resources on ``options.port``.

    Returns the database, the running plugin and the background jobs (none).
    """

    async def make_plugin(db: Database) -> WebSocketPlugin:
        return WebSocketPlugin(
            port=options.port,
            host=options.host,
            auth={
                "required": True,
                "drivers": [
                    # Devices use API keys (loaded from the devices resource at start-up)
                    {"driver": "apiKey", "config": {"keys": await load_device_api_keys(db)}},
                    # Users use JWT
                    {"driver": "jwt", "config": {"secret": options.jwt_secret}},
                ],
            },
            resources=resources_config(db),
            rate_limit=RATE_LIMIT,
        )

    db, plugin = await start_app(options, define_resources, make_plugin)
    return db, plugin, []


async def simulate_device(url: str, api_key: str, interval: float = 5.0) -> None:
    """A demo device: sends a temperature reading over the socket every ``interval`` seconds."""
    async with Client(url, api_key=api_key) as device:
        while True:
            reading = {"sensor": "temperature", "value": round(random.uniform(18, 26), 1), "unit": "C"}
            try:
                await device.insert("sensor_readings", reading)
            except ClientError as exc:
                log.warning("reading refused", code=exc.code)
            await asyncio.sleep(interval)
