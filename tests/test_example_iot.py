"""The IoT example end to end: devices with API keys, owners with JWTs, over real sockets.

Alice owns the greenhouse sensor, Bob the garage sensor. The devices are registered in the store
before the server starts, the way an operator provisions them: the server loads their keys from
the ``devices`` resource at start-up.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import pytest
import pytest_asyncio
from example_process import running_example
from ws_helpers import connect

from examples.common import Options, make_token
from examples.iot.app import create_app, define_resources, register_device
from s3db_core import Database
from s3db_ws_plugin.client import Client, Forbidden, Unauthorized

SECRET = "iot-test-secret-with-enough-bytes-for-hs256"


class Site:
    def __init__(self, url: str) -> None:
        self.url = url
        self.db = self.plugin = None
        self.devices: dict[str, dict] = {}

    async def start(self) -> None:
        options = Options(port=0, host="127.0.0.1", db=self.url, jwt_secret=SECRET)
        self.db, self.plugin, _jobs = await create_app(options)

    async def stop(self) -> None:
        await self.db.disconnect()

    def person(self, name):
        return connect(self.plugin.url, token=make_token(SECRET, name))

    def device(self, name, key=None):
        key = key or self.devices[name]["apiKey"]
        return connect(self.plugin.url, additional_headers={"x-api-key": key})


@pytest_asyncio.fixture
async def site():
    site = Site(f"memory://iot-{uuid.uuid4().hex}")
    operator = Database(site.url)
    await operator.connect()
    await define_resources(operator)
    site.devices["greenhouse"] = await register_device(operator, "alice", "greenhouse")
    site.devices["garage"] = await register_device(operator, "bob", "garage")
    await operator.disconnect()
    await site.start()
    try:
        yield site
    finally:
        await site.stop()


async def ok(client, type, **fields):
    reply = await client.call(type, **fields)
    assert reply["type"] != "error", reply
    return reply


async def refused(client, type, **fields):
    reply = await client.call(type, **fields)
    assert (reply["type"], reply.get("code")) == ("error", "FORBIDDEN"), reply
    return reply


def reading(value, **extra):
    return {"sensor": "temperature", "value": value, "unit": "C", **extra}


async def test_owners_receive_their_devices_readings_and_nobody_elses(site):
    greenhouse, garage = site.devices["greenhouse"]["id"], site.devices["garage"]["id"]
    async with (
        site.person("alice") as alice,
        site.person("bob") as bob,
        site.device("greenhouse") as gh,
        site.device("garage") as gr,
    ):
        assert gh.hello["user"]["id"] == greenhouse and gh.hello["user"]["role"] == "device"
        await ok(alice, "subscribe", resource="sensor_readings", filter={"deviceId": greenhouse})
        await ok(bob, "subscribe", resource="sensor_readings", filter={"deviceId": garage})
        # Users subscribe only to the devices they own, one device per subscription.
        await refused(bob, "subscribe", resource="sensor_readings", filter={"deviceId": greenhouse})
        missing = await refused(bob, "subscribe", resource="sensor_readings")
        assert "deviceId" in missing["message"]
        await refused(bob, "subscribe", resource="sensor_readings", filter={"deviceId": {"$in": [greenhouse, garage]}})
        await refused(bob, "subscribe", resource="sensor_readings", filter={"deviceId": "no-such-device"})

        # The greenhouse pretends to be the garage: the guard writes its own id instead.
        sent = await ok(gh, "insert", resource="sensor_readings", data=reading(21.5, deviceId=garage))
        assert sent["data"]["deviceId"] == greenhouse
        await ok(gr, "insert", resource="sensor_readings", data=reading(12.0))

        alice_events = [(f["data"]["deviceId"], f["data"]["value"]) for f in await alice.sync()]
        bob_events = [(f["data"]["deviceId"], f["data"]["value"]) for f in await bob.sync()]
        assert alice_events == [(greenhouse, 21.5)]
        assert bob_events == [(garage, 12.0)]
        # Devices receive nothing: they cannot subscribe at all.
        assert await gh.sync() == [] and await gr.sync() == []

        # Listing and reading follow the same owner rule.
        listed = await ok(alice, "list", resource="sensor_readings", filter={"deviceId": greenhouse})
        assert [r["value"] for r in listed["data"]] == [21.5]
        await refused(alice, "list", resource="sensor_readings", filter={"deviceId": garage})
        await refused(alice, "list", resource="sensor_readings")
        await refused(alice, "get", resource="sensor_readings", id=(await site.db.resources.sensor_readings.query({"deviceId": garage}))[0]["id"])
        got = await ok(alice, "get", resource="sensor_readings", id=sent["data"]["id"])
        assert got["data"]["value"] == 21.5


async def test_a_device_only_writes_its_own_readings(site):
    greenhouse = site.devices["greenhouse"]["id"]
    async with site.device("greenhouse") as gh, site.person("alice") as alice:
        mine = await ok(gh, "insert", resource="sensor_readings", data=reading(20.0, deviceId="garage"))
        assert mine["data"]["deviceId"] == greenhouse
        # A device cannot subscribe, list, rewrite or erase readings.
        await refused(gh, "subscribe", resource="sensor_readings", filter={"deviceId": greenhouse})
        await refused(gh, "list", resource="sensor_readings", filter={"deviceId": greenhouse})
        await refused(gh, "update", resource="sensor_readings", id=mine["data"]["id"], data={"value": 99})
        await refused(gh, "delete", resource="sensor_readings", id=mine["data"]["id"])
        # People (even the owner) do not write readings; readings are immutable for them too.
        await refused(alice, "insert", resource="sensor_readings", data=reading(30.0, deviceId=greenhouse))
        await refused(alice, "update", resource="sensor_readings", id=mine["data"]["id"], data={"value": 99})
        await refused(alice, "delete", resource="sensor_readings", id=mine["data"]["id"])
        stored = await site.db.resources.sensor_readings.query()
        assert [(r["deviceId"], r["value"]) for r in stored] == [(greenhouse, 20.0)]

    # The Python client signs a device in with its key the same way.
    async with Client(site.plugin.url, api_key=site.devices["garage"]["apiKey"]) as garage:
        assert garage.user["role"] == "device"
        written = await garage.insert("sensor_readings", reading(11.0, deviceId=greenhouse))
        assert written["deviceId"] == site.devices["garage"]["id"]
        with pytest.raises(Forbidden):
            await garage.subscribe("sensor_readings", {"deviceId": written["deviceId"]})


async def test_device_keys_come_from_the_devices_resource_at_start_up(site):
    async with site.person("alice") as alice:
        listed = await ok(alice, "list", resource="devices")
        assert [d["name"] for d in listed["data"]] == ["greenhouse"]
        assert "apiKey" not in listed["data"][0]  # protected
        await refused(alice, "get", resource="devices", id=site.devices["garage"]["id"])
        await refused(alice, "insert", resource="devices", data={"name": "x", "ownerId": "alice", "apiKey": "k" * 40})
        await refused(alice, "update", resource="devices", id=site.devices["greenhouse"]["id"], data={"ownerId": "bob"})
        await refused(alice, "list", resource="devices", filter={"apiKey": site.devices["garage"]["apiKey"]})

    # An unknown key is rejected before anything else happens.
    async with connect(site.plugin.url, connected=False, additional_headers={"x-api-key": "not-a-key"}) as intruder:
        code, frames = await intruder.closed()
        assert code == 4401 and frames[0]["code"] == "UNAUTHORIZED"

    # A device registered while the server runs is known from the next start.
    shed = await register_device(site.db, "alice", "shed")
    with pytest.raises(Unauthorized):
        async with Client(site.plugin.url, api_key=shed["apiKey"], reconnect=False):
            pass
    await site.stop()
    await site.start()
    async with site.device("shed", key=shed["apiKey"]) as device:
        written = await ok(device, "insert", resource="sensor_readings", data=reading(15.0))
        assert written["data"]["deviceId"] == shed["id"]


async def test_the_seeds_rate_limit_holds_a_device_to_1000_frames_a_minute(site):
    async with site.device("greenhouse") as gh:
        for i in range(1000):
            await gh.send({"type": "ping", "requestId": i})
        pongs = [await gh.recv() for _ in range(1000)]
        assert {p["type"] for p in pongs} == {"pong"}
        await gh.ws.send(json.dumps({"type": "insert", "requestId": "over", "resource": "sensor_readings", "data": reading(1.0)}))
        limited = await gh.recv()
        assert (limited["type"], limited["code"], limited["requestId"]) == ("error", "RATE_LIMITED", "over")
        assert limited["retryAfterMs"] > 0
    assert await site.db.resources.sensor_readings.count() == 0


async def test_the_rate_limit_holds_across_parallel_sockets_and_reconnects(site):
    # One device opening 3 sockets in parallel gets 1000 frames a minute in all, not 3000.
    async with site.device("greenhouse") as a, site.device("greenhouse") as b, site.device("greenhouse") as c:
        sockets = (a, b, c)
        for i in range(400):
            for n, ws in enumerate(sockets):
                await ws.send({"type": "ping", "requestId": f"{n}-{i}"})
        replies = [await ws.recv() for ws in sockets for _ in range(400)]
        kinds = [r["type"] if r["type"] == "pong" else r["code"] for r in replies]
        assert kinds.count("pong") == 1000 and kinds.count("RATE_LIMITED") == 200
    # Reconnecting does not buy a fresh budget either.
    async with site.device("greenhouse") as again:
        limited = await again.call("ping")
        assert (limited["type"], limited["code"]) == ("error", "RATE_LIMITED")
    # Another device (another user) keeps its own budget.
    async with site.device("garage") as garage:
        assert (await garage.call("ping"))["type"] == "pong"


async def test_python_m_examples_iot_runs_a_demo_device():
    async with running_example("iot", SECRET, ready="Demo device") as (url, lines):
        device_id = re.search(r"Demo device '([^']+)'", "".join(lines)).group(1)
        async with Client(url, token=make_token(SECRET, "alice")) as alice:
            # The simulated device sends its first reading at start-up, signed in with its key.
            deadline = asyncio.get_running_loop().time() + 5
            while not (page := await alice.list("sensor_readings", {"deviceId": device_id})).items:
                assert asyncio.get_running_loop().time() < deadline, "no reading from the demo device"
                await asyncio.sleep(0.05)
            assert page.items[0]["sensor"] == "temperature"
