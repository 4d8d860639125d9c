"""The dashboard example end to end over real sockets: who sees metrics and alerts, who may write
them, and who may acknowledge (the seed's "Real-time Dashboard" section)."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack

import aiohttp
import pytest
import pytest_asyncio

from examples.common import Options
from examples.dashboard.app import CPU_ALERT_PERCENT, collect_metrics, create_app
from s3db_ws_plugin.client import Client, Forbidden

SECRET = "dashboard-test-secret-with-enough-bytes"
EVENT_TIMEOUT = 5.0


class Dashboard:
    def __init__(self, db, plugin, jobs, token, stack: AsyncExitStack) -> None:
        self.db = db
        self.plugin = plugin
        self.jobs = jobs
        self.token = token
        self.stack = stack

    async def user(self, name: str, role: str) -> Client:
        client = Client(self.plugin.url, token=self.token(name, name=name.title(), role=role))
        return await self.stack.enter_async_context(client)


@pytest.fixture
def s3db_jwt_secret() -> str:
    return SECRET  # what the project's s3db_token fixture signs with


@pytest_asyncio.fixture
async def dashboard(s3db_token):
    """The example without its simulation running (tests start it when they need it)."""
    options = Options(port=0, host="127.0.0.1", db=f"memory://dash-{uuid.uuid4().hex}", jwt_secret=SECRET)
    db, plugin, jobs = await create_app(options, metric_every=0.05)
    try:
        async with AsyncExitStack() as stack:
            yield Dashboard(db, plugin, jobs, s3db_token, stack)
    finally:
        await db.disconnect()


async def next_event(sub):
    return await sub.next(timeout=EVENT_TIMEOUT)


async def test_the_simulation_streams_cpu_and_memory_to_admins_and_viewers(dashboard):
    admin, viewer = await dashboard.user("ada", "admin"), await dashboard.user("vic", "viewer")
    subs = [await admin.subscribe("metrics"), await viewer.subscribe("metrics")]
    task = asyncio.create_task(dashboard.jobs[0]())
    try:
        for sub in subs:
            seen = {}
            while len(seen) < 2:
                event = await next_event(sub)
                assert event.event == "insert"
                seen[event.data["type"]] = event.data
            assert seen["cpu"]["unit"] == "percent" and 0 <= seen["cpu"]["value"] <= 100
            assert seen["memory"]["unit"] == "MB" and 0 <= seen["memory"]["value"] <= 16384
            assert seen["cpu"]["host"] == seen["memory"]["host"] == "server-1"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # History is a partitioned list by type.
    cpu = await viewer.list("metrics", {"type": "cpu"}, order="desc", limit=5)
    assert cpu.items and all(m["type"] == "cpu" for m in cpu.items)


async def test_collectors_write_metrics_viewers_only_read_them(dashboard):
    viewer = await dashboard.user("vic", "viewer")
    collector = await dashboard.user("probe-7", "collector")
    outsider = await dashboard.user("eve", "user")
    metrics = await viewer.subscribe("metrics", {"type": "requests"})

    sample = {"type": "requests", "value": 1200, "unit": "req/min", "host": "web-2"}
    with pytest.raises(Forbidden):  # "Only viewers can read, not write"
        await viewer.insert("metrics", sample)
    written = await collector.insert("metrics", sample)
    event = await next_event(metrics)
    assert (event.data["id"], event.data["value"]) == (written["id"], 1200)

    # A collector writes but never reads; a role outside the list gets nothing at all.
    with pytest.raises(Forbidden):
        await collector.subscribe("metrics")
    with pytest.raises(Forbidden):
        await collector.list("metrics")
    with pytest.raises(Forbidden):
        await collector.get("metrics", written["id"])
    for call in (
        outsider.subscribe("metrics"),
        outsider.list("metrics"),
        outsider.insert("metrics", sample),
        outsider.subscribe("alerts"),
        outsider.list("alerts"),
    ):
        with pytest.raises(Forbidden):
            await call
    # Samples are measurements: viewers cannot delete them, nobody edits them.
    with pytest.raises(Forbidden):
        await viewer.delete("metrics", written["id"])
    admin = await dashboard.user("ada", "admin")
    with pytest.raises(Forbidden):
        await admin.update("metrics", written["id"], {"value": 1})
    assert (await viewer.get("metrics", written["id"]))["value"] == 1200


async def test_viewers_cannot_acknowledge_admins_can_and_are_recorded(dashboard):
    admin, viewer = await dashboard.user("ada", "admin"), await dashboard.user("vic", "viewer")
    system = await dashboard.user("monitor", "system")
    # The seed's DashboardClient subscribes to the open alerts.
    open_alerts = await viewer.subscribe("alerts", {"acknowledged": False})

    with pytest.raises(Forbidden):
        await viewer.insert("alerts", {"severity": "info", "message": "hi", "source": "vic"})
    with pytest.raises(Forbidden):
        await system.subscribe("alerts")
    alert = await system.insert(
        "alerts",
        {"severity": "critical", "message": "disk full", "source": "db-1",
         "acknowledged": True, "acknowledgedBy": "nobody"},
    )
    assert alert["acknowledged"] is False and alert.get("acknowledgedBy") is None
    event = await next_event(open_alerts)
    assert (event.event, event.data["id"]) == ("insert", alert["id"])

    # A viewer cannot acknowledge (nor delete): the alert stays open.
    with pytest.raises(Forbidden):
        await viewer.update("alerts", alert["id"], {"acknowledged": True})
    with pytest.raises(Forbidden):
        await viewer.delete("alerts", alert["id"])
    stored = await dashboard.db.resources.alerts.get(alert["id"])
    assert stored["acknowledged"] is False and stored.get("acknowledgedBy") is None

    # An admin can; acknowledgedBy is the admin, whatever the client claims.
    acked = await admin.update(
        "alerts", alert["id"], {"acknowledged": True, "acknowledgedBy": "vic"}
    )
    assert (acked["acknowledged"], acked["acknowledgedBy"]) == (True, "ada")
    # The viewer learns it although the alert has left the {acknowledged: false} filter.
    update = await next_event(open_alerts)
    assert (update.event, update.data["id"]) == ("update", alert["id"])
    assert (update.data["acknowledged"], update.data["acknowledgedBy"]) == (True, "ada")
    # Setting acknowledgedBy alone is ignored; re-opening an alert clears it.
    again = await admin.update("alerts", alert["id"], {"acknowledgedBy": "vic"})
    assert again["acknowledgedBy"] == "ada"
    reopened = await admin.update("alerts", alert["id"], {"acknowledged": False})
    assert (reopened["acknowledged"], reopened["acknowledgedBy"]) == (False, None)


@pytest.mark.parametrize("dev", [False, True])
async def test_the_passwordless_login_exists_only_in_dev_mode(dev):
    # Without --dev, `{"name": "mallory", "role": "admin"}` must not buy an admin token.
    options = Options(
        port=0, host="127.0.0.1", db=f"memory://dash-{uuid.uuid4().hex}", jwt_secret=SECRET, dev=dev
    )
    db, plugin, _jobs = await create_app(options)
    try:
        async with aiohttp.ClientSession() as http:
            body = {"name": "mallory", "role": "admin"}
            async with http.post(f"{plugin.http_url}/dev/login", json=body) as resp:
                assert resp.status == (200 if dev else 404)
                token = (await resp.json())["token"] if dev else None
        if dev:  # the development page's login, as the browser test uses it
            async with Client(plugin.url, token=token) as mallory:
                assert mallory.user["role"] == "admin"
    finally:
        await db.disconnect()


async def test_a_cpu_spike_raises_an_alert(dashboard):
    admin = await dashboard.user("ada", "admin")
    alerts = await admin.subscribe("alerts")
    await collect_metrics(dashboard.db, sample=lambda: 0.5)
    await collect_metrics(dashboard.db, sample=lambda: (CPU_ALERT_PERCENT + 5) / 100)
    event = await next_event(alerts)
    assert event.data["severity"] == "warning"
    assert event.data["message"] == "CPU at 95% on server-1"
    assert len(await dashboard.db.resources.alerts.query({})) == 1
