"""The Python client against a real server: requests, typed errors, subscriptions, reconnect
with resubscribe across a server restart, and token refresh before expiry."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from structlog.testing import capture_logs

from s3db_core import Database, ForbiddenError
from s3db_ws_plugin import WebSocketPlugin
from s3db_ws_plugin.client import (
    Backoff,
    Client,
    ClientError,
    Conflict,
    ConnectionLost,
    Event,
    Forbidden,
    InternalError,
    InvalidMessage,
    NotFound,
    Page,
    RateLimited,
    RequestTimeout,
    ResourceNotFound,
    Unauthorized,
    UnknownMessageType,
    ValidationFailed,
    jwt_expiry,
    refresh_delay,
)

FAST = Backoff(initial=0.05, maximum=0.3)
NOTE = {
    "title": "string|required",
    "roomId": "string|optional",
    "owner": "string|optional",
    "secret": "string|optional",
}


def boom(user, ctx):
    raise RuntimeError("guard bug with a secret inside")


def only_admins_delete(user, ctx):
    return user is not None and user.role == "admin"


def owner_only_update(user, ctx):
    if ctx.record is not None and ctx.record.get("owner") not in (None, user.id):
        raise ForbiddenError("only the owner may edit this note")
    return True


def rooms_only(user, filter):
    return bool(filter and filter.get("roomId"))


@pytest.fixture
async def s3db_database(s3db_database):
    await s3db_database.create_resource("notes", NOTE)
    await s3db_database.create_resource("rooms", {"name": "string|required"})
    await s3db_database.create_resource("broken", {"name": "string|optional"})
    return s3db_database


@pytest.fixture
def s3db_plugin_config(s3db_jwt_secret):
    return {
        "auth": {
            "required": True,
            "drivers": [{"driver": "jwt", "config": {"secret": s3db_jwt_secret}}],
        },
        "resources": {
            "notes": {
                "protected": ["secret"],
                "client_ids": True,  # the Conflict test inserts a chosen id twice
                "guard": {"delete": only_admins_delete, "update": owner_only_update},
            },
            "rooms": {"guard": {"subscribe": rooms_only}},
            "broken": {"guard": {"get": boom}},
        },
    }


# -- requests ----------------------------------------------------------------------------------
async def test_ping_returns_the_server_clock(s3db_client):
    before = int(time.time() * 1000)
    assert await s3db_client.ping() >= before - 1000
    assert s3db_client.user["id"] == "user-1"
    assert s3db_client.client_id


async def test_insert_get_update_delete_return_records(s3db_connect, s3db_token):
    client = await s3db_connect(token=s3db_token("alice", role="admin"))
    note = await client.insert("notes", {"title": "hi", "owner": "alice", "secret": "s3"})
    assert note["title"] == "hi" and "secret" not in note
    assert await client.get("notes", note["id"]) == note
    updated = await client.update("notes", note["id"], {"title": "hello"})
    assert updated["title"] == "hello" and updated["id"] == note["id"]
    deleted = await client.delete("notes", note["id"])
    assert deleted["id"] == note["id"] and "secret" not in deleted
    with pytest.raises(NotFound) as err:
        await client.get("notes", note["id"])
    assert err.value.code == "NOT_FOUND" and err.value.request_id is not None


async def test_list_pages_with_a_cursor(s3db_client):
    for n in range(5):
        await s3db_client.insert("notes", {"title": f"n{n}", "roomId": "r1" if n % 2 else "r2"})
    page = await s3db_client.list("notes", limit=3)
    assert isinstance(page, Page) and len(page.items) == 3 and page.cursor
    items, cursor = await s3db_client.list("notes", limit=3, cursor=page.cursor)
    assert len(items) == 2 and cursor is None
    assert [n["title"] for n in page.items + items] == ["n0", "n1", "n2", "n3", "n4"]
    r1 = await s3db_client.list("notes", filter={"roomId": "r1"}, order="desc")
    assert [n["title"] for n in r1.items] == ["n3", "n1"]


async def test_auth_refreshes_the_token_of_the_same_user(s3db_client, s3db_token):
    user = await s3db_client.auth(s3db_token("user-1", role="user", plan="pro"))
    assert user["id"] == "user-1" and user["plan"] == "pro"
    with pytest.raises(Forbidden):
        await s3db_client.auth(s3db_token("mallory"))
    assert await s3db_client.ping()


async def test_auth_with_a_bad_token_is_unauthorized_and_final(s3db_client):
    with pytest.raises(Unauthorized):
        await s3db_client.auth("not.a.token")
    with pytest.raises(Unauthorized):
        await s3db_client.ping()


async def test_each_error_code_raises_its_own_type(s3db_connect, s3db_token, s3db_database):
    client = await s3db_connect(token=s3db_token("bob"))
    with pytest.raises(ValidationFailed) as err:
        await client.insert("notes", {"title": 5, "color": "red"})
    assert {e["field"] for e in err.value.errors} == {"title", "color"}
    note = await client.insert("notes", {"id": "fixed-id", "title": "one", "owner": "alice"})
    with pytest.raises(Conflict):
        await client.insert("notes", {"id": "fixed-id", "title": "two"})
    with pytest.raises(Forbidden, match="only the owner"):
        await client.update("notes", note["id"], {"title": "mine now"})
    with pytest.raises(NotFound):
        await client.update("notes", "missing", {"title": "x"})
    with pytest.raises(Forbidden):
        await client.delete("notes", note["id"])
    with pytest.raises(ResourceNotFound) as err:
        await client.get("users", "u1")
    assert err.value.details == {"resource": "users"}
    with pytest.raises(InvalidMessage) as err:
        await client.list("notes", limit=5000)
    assert err.value.details["field"] == "limit"
    with pytest.raises(UnknownMessageType):
        await client.request({"type": "explode"})
    with pytest.raises(InternalError) as err:
        await client.get("broken", "x")
    assert err.value.error_id and "secret" not in err.value.message
    assert (await s3db_database.resources.notes.get(note["id"]))["title"] == "one"
    assert await client.ping()  # errors leave the connection usable


async def test_rate_limited_carries_retry_after(s3db_database, s3db_plugin_factory, s3db_token):
    plugin = await s3db_plugin_factory(
        s3db_database, resources={"notes": True}, rate_limit={"max_requests": 3, "window_ms": 60000}
    )
    async with Client(plugin.url, token=s3db_token()) as client:
        for _ in range(3):
            await client.ping()
        with pytest.raises(RateLimited) as err:
            await client.ping()
    assert err.value.retry_after_ms > 0 and isinstance(err.value, ClientError)


async def test_connect_with_a_bad_token_or_no_server_fails(s3db_server, s3db_token):
    with pytest.raises(Unauthorized):
        await Client(s3db_server.url, token=s3db_token(ttl=-10)).connect()
    with pytest.raises(Unauthorized):
        await Client(s3db_server.url, token="garbage.token.here").connect()
    dead = Client("ws://127.0.0.1:9/", request_timeout=2)
    with pytest.raises(ConnectionLost):
        await dead.connect()


async def test_api_key_authenticates_a_device(s3db_database, s3db_plugin_factory):
    plugin = await s3db_plugin_factory(
        s3db_database,
        auth={
            "required": True,
            "drivers": [
                {"driver": "apiKey", "config": {"keys": {"k-1": {"id": "dev-1", "role": "device"}}}}
            ],
        },
        resources={"notes": True},
    )
    async with Client(plugin.url, api_key="k-1") as device:
        assert device.user["id"] == "dev-1" and device.user["role"] == "device"
        assert (await device.insert("notes", {"title": "reading"}))["title"] == "reading"
    with pytest.raises(Unauthorized):
        await Client(plugin.url, api_key="wrong").connect()


# -- subscriptions -----------------------------------------------------------------------------
async def test_subscribe_yields_events_to_the_matching_subscription(s3db_client, s3db_database):
    notes = s3db_database.resources.notes
    async with (
        s3db_client.subscribe("notes", filter={"roomId": "r1"}) as r1,
        s3db_client.subscribe("notes", filter={"roomId": "r2"}, events=["insert"]) as r2,
    ):
        assert r1.effective_filter == {"roomId": "r1"}
        a = await notes.insert({"title": "a", "roomId": "r1", "secret": "x"})
        b = await notes.insert({"title": "b", "roomId": "r2"})
        await notes.update(b["id"], {"title": "b2"})  # r2 does not want updates
        await notes.update(a["id"], {"roomId": "r3"})  # leaves r1: r1 still learns of it
        first = await r1.next(timeout=2)
        assert first == Event("notes", "insert", first.data, first.timestamp, 1, 1, first.epoch)
        assert first.data["title"] == "a" and "secret" not in first.data
        moved = await r1.next(timeout=2)
        assert (moved.event, moved.data["roomId"]) == ("update", "r3")
        only = await r2.next(timeout=2)
        assert (only.event, only.data["title"]) == ("insert", "b")
        with pytest.raises(TimeoutError):
            await r2.next(timeout=0.2)
    assert r1.closed and r2.closed
    await notes.insert({"title": "after", "roomId": "r1"})
    assert [n async for n in r1] == []  # a closed subscription's iterator ends


async def test_closing_one_subscription_keeps_its_twin(s3db_client, s3db_database):
    one = await s3db_client.subscribe("notes")
    two = await s3db_client.subscribe("notes", events=["delete"])
    await one.close()
    note = await s3db_database.resources.notes.insert({"title": "x"})
    await s3db_database.resources.notes.delete(note["id"])
    event = await two.next(timeout=2)
    assert (event.event, event.data["id"]) == ("delete", note["id"])
    await two.close()


async def test_subscribe_errors_are_typed(s3db_client):
    with pytest.raises(Forbidden):
        await s3db_client.subscribe("rooms")
    with pytest.raises(ResourceNotFound):
        await s3db_client.subscribe("users")
    sub = await s3db_client.subscribe("rooms", filter={"roomId": "lobby"})
    assert sub.effective_filter == {"roomId": "lobby"}


async def test_iterator_raises_when_a_static_token_expires(s3db_connect, s3db_token):
    # 3 s, not 1: on a loaded 2-core CI machine connecting and subscribing once took longer than a
    # 1 s token lived, and the test failed before it reached the iterator.
    client = await s3db_connect(token=s3db_token(ttl=3))
    sub = await client.subscribe("notes")
    with pytest.raises(Unauthorized, match="expired"):
        async with asyncio.timeout(20):
            async for _ in sub:
                pass
    with pytest.raises(Unauthorized):
        await client.ping()


# -- reconnect ---------------------------------------------------------------------------------
async def start_app(name: str, port: int = 0) -> tuple[Database, WebSocketPlugin]:
    db = Database(f"memory://{name}")
    await db.connect()
    await db.create_resource("notes", NOTE)
    plugin = WebSocketPlugin(port=port, resources={"notes": True}, heartbeat_interval=None)
    await db.use_plugin(plugin)
    return db, plugin


async def test_reconnects_and_resubscribes_after_a_server_restart():
    name = f"restart-{uuid.uuid4().hex}"
    db, plugin = await start_app(name)
    reconnected = asyncio.Event()
    client = Client(
        plugin.url, backoff=FAST, request_timeout=1, on_reconnect=lambda c: reconnected.set()
    )
    async with client:
        sub = await client.subscribe("notes", filter={"roomId": "r1"})
        before = await db.resources.notes.insert({"title": "before", "roomId": "r1"})
        assert (await sub.next(timeout=2)).data["id"] == before["id"]
        first_id = client.client_id

        await db.disconnect()  # closes every socket with 1001
        with pytest.raises(ConnectionLost):
            await client.ping()  # no server to reconnect to within request_timeout
        db, plugin = await start_app(name, port=plugin.port)  # same port, same store
        await asyncio.wait_for(reconnected.wait(), 5)

        assert client.client_id != first_id and client.reconnects == 1
        for n in range(3):
            await db.resources.notes.insert({"title": f"after-{n}", "roomId": "r1"})
        await db.resources.notes.insert({"title": "elsewhere", "roomId": "r2"})
        # A new process has a new local stream: what happened meanwhile cannot be replayed,
        # and the iterator says so before the new events.
        reload = await sub.next(timeout=2)
        assert reload.is_reload and reload.event == "reload" and sub.recovered is False
        titles = [(await sub.next(timeout=2)).data["title"] for _ in range(3)]
        assert titles == ["after-0", "after-1", "after-2"]
        assert (await client.get("notes", before["id"]))["title"] == "before"
    await db.disconnect()


async def test_a_request_in_flight_when_the_socket_drops_fails_fast(s3db_token):
    name = f"inflight-{uuid.uuid4().hex}"
    db = Database(f"memory://{name}")
    await db.connect()
    await db.create_resource("notes", NOTE)
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_get(user, ctx):
        entered.set()
        await release.wait()
        return True

    plugin = WebSocketPlugin(port=0, resources={"notes": {"guard": {"get": slow_get}}})
    await db.use_plugin(plugin)
    async with Client(plugin.url, backoff=FAST, request_timeout=30) as client:
        pending = asyncio.create_task(client.get("notes", "x"))
        await asyncio.wait_for(entered.wait(), 2)
        stopping = asyncio.create_task(db.disconnect())
        started = time.monotonic()
        with pytest.raises(ConnectionLost):
            await pending
        assert time.monotonic() - started < 2
        release.set()
        await stopping


async def test_a_request_without_a_reply_times_out_at_its_own_deadline():
    db = Database(f"memory://timeout-{uuid.uuid4().hex}")
    await db.connect()
    await db.create_resource("notes", NOTE)
    release = asyncio.Event()

    async def stuck_get(user, ctx):
        if ctx.id == "stuck":
            await release.wait()
        return True

    plugin = WebSocketPlugin(port=0, resources={"notes": {"guard": {"get": stuck_get}}})
    await db.use_plugin(plugin)
    async with Client(plugin.url, request_timeout=0.4) as client:
        started = time.monotonic()
        with pytest.raises(RequestTimeout) as info:
            await client.get("notes", "stuck")
        assert 0.35 <= time.monotonic() - started < 2
        assert info.value.code == "TIMEOUT" and isinstance(info.value.request_id, int)
        assert "'get'" in info.value.message

        # A request sent later with a shorter timeout fails first: each at its own deadline.
        client.request_timeout = 1.5
        slow = asyncio.create_task(client.get("notes", "stuck"))
        await asyncio.sleep(0.05)
        client.request_timeout = 0.1
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            await client.get("notes", "stuck")
        assert time.monotonic() - started < 1 and not slow.done()
        with pytest.raises(RequestTimeout):
            await slow
        assert 1.2 <= time.monotonic() - started < 3

        release.set()  # the late replies find no request and are ignored
        client.request_timeout = 5
        assert await client.ping() > 0
        with pytest.raises(NotFound):
            await client.get("notes", "stuck")
        assert client.connected and not client._pending
    await db.disconnect()


async def test_requests_wait_for_the_reconnect():
    name = f"wait-{uuid.uuid4().hex}"
    db, plugin = await start_app(name)
    async with Client(plugin.url, backoff=FAST) as client:
        await db.disconnect()
        while client.connected:
            await asyncio.sleep(0.01)
        waiting = asyncio.create_task(client.insert("notes", {"title": "queued"}))
        await asyncio.sleep(0.2)
        db, plugin = await start_app(name, port=plugin.port)
        record = await asyncio.wait_for(waiting, 5)
        assert (await db.resources.notes.get(record["id"]))["title"] == "queued"
    await db.disconnect()


async def test_without_reconnect_the_iterator_raises_connection_lost():
    db, plugin = await start_app(f"noreconnect-{uuid.uuid4().hex}")
    async with Client(plugin.url, reconnect=False) as client:
        sub = await client.subscribe("notes")
        await db.disconnect()
        with pytest.raises(ConnectionLost):
            await sub.next(timeout=3)


# -- token refresh -----------------------------------------------------------------------------
async def test_token_is_refreshed_before_it_expires(s3db_connect, s3db_token, s3db_database):
    issued = []

    async def fresh_token():
        issued.append(time.time())
        return s3db_token("user-1", ttl=2)

    client = await s3db_connect(token=fresh_token)
    sub = await client.subscribe("notes")
    await asyncio.sleep(3.5)  # well past the first token's exp
    note = await s3db_database.resources.notes.insert({"title": "still here"})
    assert (await sub.next(timeout=2)).data["id"] == note["id"]
    assert client.reconnects == 0 and len(issued) >= 2


async def test_4401_with_a_token_callable_reconnects_with_a_fresh_token(s3db_connect, s3db_token):
    reconnected = asyncio.Event()
    issued: list[str] = []

    def token() -> str:
        issued.append(s3db_token("user-1"))
        return issued[-1]

    with capture_logs() as logs:
        client = await s3db_connect(token=token, on_reconnect=lambda c: reconnected.set())
        sub = await client.subscribe("notes")
        with pytest.raises(Unauthorized):
            await client.auth("not.a.token")  # the server answers UNAUTHORIZED and closes 4401
        await asyncio.wait_for(reconnected.wait(), 5)
        assert client.reconnects == 1 and await client.ping()
        await client.insert("notes", {"title": "back"})
        assert (await sub.next(timeout=2)).data["title"] == "back"
    assert len(issued) == 2
    assert {"disconnected", "reconnecting"} <= {entry["event"] for entry in logs}
    assert not any(t in repr(logs) for t in [*issued, "not.a.token"])  # tokens are never logged


def test_jwt_expiry_and_refresh_delay(s3db_token):
    token = s3db_token(ttl=100)
    assert abs(jwt_expiry(token) - (time.time() + 100)) < 2
    assert jwt_expiry("an-api-key") is None and jwt_expiry("a.b.c") is None
    assert refresh_delay(4600, 1000, 30) == 3570  # 30 s before expiry
    assert refresh_delay(1100, 1000, 30) == 80  # at 80% of a lifetime under 150 s
    assert refresh_delay(1002, 1000, 30) == pytest.approx(1.6)  # short tokens: at 80%
    assert refresh_delay(1000, 1001, 30) == 0
