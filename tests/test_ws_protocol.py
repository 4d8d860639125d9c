"""Wire protocol v1 over real sockets: every message type's success and error paths, error
codes, close codes 1001 and 1009, heartbeats, compression, /health and /metrics.

Every test here talks to the server through the independent ``websockets`` library (or a bare
TCP socket), never through the product's own Python client, on purpose: their subject is the
wire itself (exact frame shapes and field names, ``requestId`` echoing, malformed, non-object,
oversized and binary frames, unknown types, close codes), and a client written by the same
team could share the server's mistakes and hide them. The full flows here
(``test_authenticated_flow_frame_by_frame``, ``test_crud_and_events_round_trip``) check the
protocol end to end from outside, against memory:// and the real S3 server. What users see
through ``s3db_ws_plugin.client.Client`` is tested in test_client.py and in the client sections
of test_ws_auth.py, test_ws_delivery.py and test_ws_guards.py.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import jwt
import pytest
import structlog
from ws_helpers import JWT_AUTH, SECRET, connect, make_token, notes_resource, serve

from s3db_core import ForbiddenError, StorageError


async def test_ping_echoes_string_and_numeric_request_ids():
    async with serve(resources={}) as (_, plugin), connect(plugin.url) as client:
        for rid in ("abc", 7, 2.5, 0):
            await client.send({"type": "ping", "requestId": rid})
            pong = await client.recv()
            assert pong["type"] == "pong" and pong["requestId"] == rid
            assert isinstance(pong["timestamp"], int)
        await client.send({"type": "ping"})
        assert "requestId" not in await client.recv()


async def test_connected_frame_for_anonymous_connection():
    async with serve(resources={}) as (_, plugin), connect(plugin.url) as client:
        assert client.hello["user"] is None
        assert isinstance(client.hello["clientId"], str) and client.hello["clientId"]
        assert isinstance(client.hello["timestamp"], int)


async def test_authenticated_flow_frame_by_frame(ws_store_url):
    """auth -> subscribe -> insert/update/delete -> event, every frame compared whole."""
    served = serve(notes_resource, url=ws_store_url, resources={"notes": True}, auth=JWT_AUTH)
    async with served as (_, plugin):
        token = make_token("alice", role="admin", tenantId="t1")
        claims = jwt.decode(token, SECRET, algorithms=["HS256"])
        user = {**claims, "id": "alice"}
        async with (
            connect(plugin.url, token=token) as watcher,
            connect(plugin.url, connected=False) as writer,
        ):
            hello = watcher.hello
            assert hello == {
                "type": "connected",
                "clientId": hello["clientId"],
                "user": user,
                "timestamp": hello["timestamp"],
            }
            assert isinstance(hello["clientId"], str) and isinstance(hello["timestamp"], int)

            # No credentials with the upgrade: the server says at once that it wants some.
            assert await writer.recv() == {"type": "auth_required", "timeoutMs": 5000}
            await writer.send({"type": "auth", "token": token, "requestId": "a-1"})
            assert await writer.recv() == {
                "type": "authenticated",
                "requestId": "a-1",
                "user": user,
            }
            connected = await writer.recv()
            assert connected["type"] == "connected" and connected["user"] == user

            await watcher.send(
                {
                    "type": "subscribe",
                    "resource": "notes",
                    "filter": {"roomId": "r1"},
                    "requestId": 1,
                }
            )
            subscribed = await watcher.recv()
            assert subscribed == {
                "type": "subscribed",
                "requestId": 1,
                "resource": "notes",
                "filter": {"roomId": "r1"},
                "events": ["insert", "update", "delete"],
                "position": subscribed["position"],
            }
            positions = [subscribed["position"]]

            await writer.send(
                {
                    "type": "insert",
                    "resource": "notes",
                    "requestId": 2,
                    "data": {"title": "elsewhere", "roomId": "r2"},
                }
            )
            assert (await writer.recv())["type"] == "inserted"
            await writer.send(
                {
                    "type": "insert",
                    "resource": "notes",
                    "requestId": 3,
                    "data": {"title": "hello", "roomId": "r1"},
                }
            )
            inserted = await writer.recv()
            record = inserted["data"]
            assert inserted == {
                "type": "inserted",
                "requestId": 3,
                "resource": "notes",
                "data": record,
            }
            assert record == {
                "id": record["id"],
                "title": "hello",
                "roomId": "r1",
                "createdAt": record["createdAt"],
                "updatedAt": record["updatedAt"],
            }
            event = await watcher.recv()  # not the r2 note: it was first
            assert event == {
                "type": "event",
                "resource": "notes",
                "event": "insert",
                "data": record,
                "timestamp": event["timestamp"],
                "version": event["version"],
                "offset": event["offset"],
                "epoch": event["epoch"],
            }
            positions.append(event)
            assert isinstance(event["timestamp"], int)

            await writer.send(
                {
                    "type": "update",
                    "resource": "notes",
                    "id": record["id"],
                    "data": {"status": "done"},
                    "requestId": 4,
                }
            )
            updated = await writer.recv()
            after = updated["data"]
            assert updated == {
                "type": "updated",
                "requestId": 4,
                "resource": "notes",
                "data": after,
            }
            assert after == {**record, "status": "done", "updatedAt": after["updatedAt"]}
            event = await watcher.recv()
            assert event == {
                "type": "event",
                "resource": "notes",
                "event": "update",
                "data": after,
                "timestamp": event["timestamp"],
                "version": event["version"],
                "offset": event["offset"],
                "epoch": event["epoch"],
            }
            positions.append(event)

            await writer.send(
                {"type": "delete", "resource": "notes", "id": record["id"], "requestId": 5}
            )
            assert await writer.recv() == {
                "type": "deleted",
                "requestId": 5,
                "resource": "notes",
                "id": record["id"],
                "data": after,
            }
            event = await watcher.recv()
            assert event == {
                "type": "event",
                "resource": "notes",
                "event": "delete",
                "data": after,
                "timestamp": event["timestamp"],
                "version": event["version"],
                "offset": event["offset"],
                "epoch": event["epoch"],
            }
            positions.append(event)

            # Versions 1, 2, 2 (a delete carries the deleted version); offsets count every
            # change of the resource (the r2 note was the first), in one epoch.
            assert [e["version"] for e in positions[1:]] == [1, 2, 2]
            assert [e["offset"] for e in positions] == [0, 2, 3, 4]
            assert len({e["epoch"] for e in positions}) == 1
            await watcher.send({"type": "unsubscribe", "resource": "notes", "requestId": "u"})
            assert await watcher.recv() == {
                "type": "unsubscribed",
                "requestId": "u",
                "resource": "notes",
            }


async def test_crud_and_events_round_trip(ws_store_url):
    """The seed's basic flow against memory:// and the real S3 server."""
    async with serve(notes_resource, url=ws_store_url, resources={"notes": True}) as (_, plugin):
        async with connect(plugin.url) as writer, connect(plugin.url) as watcher:
            sub = await watcher.call("subscribe", resource="notes")
            assert sub["type"] == "subscribed"
            assert sub["filter"] == {} and sub["events"] == ["insert", "update", "delete"]

            ins = await writer.call("insert", resource="notes", data={"title": "hello"})
            assert ins["type"] == "inserted" and ins["resource"] == "notes"
            record = ins["data"]
            assert record["title"] == "hello" and record["id"] and record["createdAt"]
            event = await watcher.next_event()
            assert event["event"] == "insert" and event["data"] == record
            assert event["resource"] == "notes" and isinstance(event["timestamp"], int)

            got = await writer.call("get", resource="notes", id=record["id"])
            assert got["type"] == "data" and got["data"] == record

            upd = await writer.call(
                "update", resource="notes", id=record["id"], data={"status": "x"}
            )
            assert upd["type"] == "updated" and upd["data"]["status"] == "x"
            assert upd["data"]["title"] == "hello"
            event = await watcher.next_event()
            assert event["event"] == "update" and event["data"] == upd["data"]

            page = await writer.call("list", resource="notes")
            assert page["type"] == "data" and page["data"] == [upd["data"]]
            assert page["cursor"] is None

            gone = await writer.call("delete", resource="notes", id=record["id"])
            assert gone["type"] == "deleted" and gone["id"] == record["id"]
            event = await watcher.next_event()
            assert event["event"] == "delete" and event["data"]["id"] == record["id"]

            missing = await writer.call("get", resource="notes", id=record["id"])
            assert missing["code"] == "NOT_FOUND"


async def test_list_limit_cursor_and_order():
    async with serve(notes_resource, resources={"notes": True}) as (db, plugin):
        ids = [(await db.resources.notes.insert({"title": f"n{i}"}))["id"] for i in range(105)]
        async with connect(plugin.url) as client:
            page = await client.call("list", resource="notes")
            assert [r["id"] for r in page["data"]] == ids[:100]  # default limit 100
            assert page["cursor"]
            rest = await client.call("list", resource="notes", cursor=page["cursor"])
            assert [r["id"] for r in rest["data"]] == ids[100:] and rest["cursor"] is None

            first = await client.call("list", resource="notes", limit=2, order="desc")
            assert [r["id"] for r in first["data"]] == ids[:-3:-1]
            second = await client.call(
                "list", resource="notes", limit=2, order="desc", cursor=first["cursor"]
            )
            assert [r["id"] for r in second["data"]] == ids[-3:-5:-1]

            filtered = await client.call("list", resource="notes", filter={"title": "n7"})
            assert [r["id"] for r in filtered["data"]] == [ids[7]]

            for bad in (0, 1001, "10", True, 1.5):
                error = await client.call("list", resource="notes", limit=bad)
                assert error["code"] == "INVALID_MESSAGE" and error["details"]["field"] == "limit"
            bad_cursor = await client.call("list", resource="notes", cursor="not-a-cursor")
            assert bad_cursor["code"] == "VALIDATION_ERROR"
            assert bad_cursor["details"][0]["field"] == "cursor"


async def test_invalid_json_keeps_the_connection_usable():
    async with serve(resources={}) as (_, plugin), connect(plugin.url) as client:
        for raw in ("{not json", "", "[1,", b"\xff\xfe"):
            await client.send(raw)
            error = await client.recv()
            assert error == {"type": "error", "code": "INVALID_JSON", "message": error["message"]}
        assert (await client.call("ping"))["type"] == "pong"


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"resource": "notes"}, "type"),
        ({"type": 5}, "type"),
        ({"type": "get", "id": "x"}, "resource"),
        ({"type": "get", "resource": 3, "id": "x"}, "resource"),
        ({"type": "get", "resource": "notes"}, "id"),
        ({"type": "get", "resource": "notes", "id": ["x"]}, "id"),
        ({"type": "insert", "resource": "notes"}, "data"),
        ({"type": "insert", "resource": "notes", "data": "x"}, "data"),
        ({"type": "update", "resource": "notes", "id": "a", "data": [1]}, "data"),
        ({"type": "subscribe", "resource": "notes", "filter": "roomId=1"}, "filter"),
        ({"type": "subscribe", "resource": "notes", "events": ["insert", "boom"]}, "events"),
        ({"type": "subscribe", "resource": "notes", "events": "insert"}, "events"),
        ({"type": "unsubscribe", "resource": "notes", "filter": 1}, "filter"),
        ({"type": "list", "resource": "notes", "order": "sideways"}, "order"),
        ({"type": "list", "resource": "notes", "cursor": 12}, "cursor"),
        ({"type": "auth"}, "token"),
        ({"type": "auth", "token": {"a": 1}}, "token"),
        ({"type": "ping", "requestId": {"nested": 1}}, "requestId"),
        ({"type": "ping", "requestId": True}, "requestId"),
    ],
)
async def test_invalid_message_names_the_field(frame, field):
    async with serve(notes_resource, resources={"notes": True}) as (_, plugin):
        async with connect(plugin.url) as client:
            await client.send(frame)
            error = await client.recv()
            assert error["type"] == "error" and error["code"] == "INVALID_MESSAGE"
            assert error["details"]["field"] == field
            assert field in error["message"]


async def test_non_object_frames_are_invalid_messages():
    async with serve(resources={}) as (_, plugin), connect(plugin.url) as client:
        for frame in ("[1, 2]", "3", '"ping"', "null"):
            await client.send(frame)
            assert (await client.recv())["code"] == "INVALID_MESSAGE"


async def test_unknown_message_type_echoes_request_id():
    async with serve(resources={}) as (_, plugin), connect(plugin.url) as client:
        error = await client.call("explode")
        assert error["code"] == "UNKNOWN_MESSAGE_TYPE" and error["requestId"].startswith("r")
        assert "explode" in error["message"]


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "subscribe"},
        {"type": "unsubscribe"},
        {"type": "list"},
        {"type": "get", "id": "a"},
        {"type": "insert", "data": {"title": "x"}},
        {"type": "update", "id": "a", "data": {"title": "x"}},
        {"type": "delete", "id": "a"},
    ],
)
async def test_resource_not_found_for_every_operation(frame):
    """`hidden` exists in the database but is not named in `resources`."""

    async def setup(db):
        await notes_resource(db)
        await db.create_resource("hidden", {"title": "string"})
        await db.resources.hidden.insert({"id": "a", "title": "secret"})

    async with serve(setup, resources={"notes": True, "ghost": True}) as (_, plugin):
        async with connect(plugin.url) as client:
            for resource in ("hidden", "ghost", "nope"):
                error = await client.request({**frame, "resource": resource})
                assert error["code"] == "RESOURCE_NOT_FOUND", error
                assert error["details"] == {"resource": resource}


async def test_not_found_for_get_update_delete():
    async with serve(notes_resource, resources={"notes": True}) as (_, plugin):
        async with connect(plugin.url) as client:
            for frame in (
                {"type": "get", "id": "missing"},
                {"type": "update", "id": "missing", "data": {"title": "x"}},
                {"type": "delete", "id": "missing"},
            ):
                error = await client.request({**frame, "resource": "notes"})
                assert error["code"] == "NOT_FOUND" and "missing" in error["message"]


async def test_validation_error_lists_every_failing_field():
    async with serve(notes_resource, resources={"notes": True}) as (db, plugin):
        async with connect(plugin.url) as client:
            error = await client.call(
                "insert", resource="notes", data={"title": "x" * 60, "score": "high", "bogus": 1}
            )
            assert error["code"] == "VALIDATION_ERROR"
            fields = {d["field"] for d in error["details"]}
            assert {"title", "score", "bogus"} <= fields
            assert all({"field", "rule", "message"} <= set(d) for d in error["details"])
            assert await db.resources.notes.count() == 0

            record = await db.resources.notes.insert({"title": "ok"})
            error = await client.call(
                "update", resource="notes", id=record["id"], data={"score": "x"}
            )
            assert error["code"] == "VALIDATION_ERROR" and error["details"][0]["field"] == "score"

            error = await client.call("list", resource="notes", filter={"score": {"$regex": "a"}})
            assert error["code"] == "VALIDATION_ERROR" and error["details"][0]["field"] == "score"
            error = await client.call("subscribe", resource="notes", filter={"score": {"$gt": []}})
            assert error["code"] == "VALIDATION_ERROR"
            error = await client.call("get", resource="notes", id="a/b")
            assert error["code"] == "VALIDATION_ERROR" and error["details"][0]["field"] == "id"


async def test_conflict_on_duplicate_id():
    async with serve(notes_resource, resources={"notes": {"client_ids": True}}) as (_, plugin):
        async with connect(plugin.url) as client:
            first = await client.call("insert", resource="notes", data={"id": "n1", "title": "a"})
            assert first["type"] == "inserted"
            error = await client.call("insert", resource="notes", data={"id": "n1", "title": "b"})
            assert error["code"] == "CONFLICT"


async def test_internal_error_is_generic_and_logged_with_an_id():
    def boom(user, ctx):
        raise RuntimeError("bucket s3://private-bucket key AKIASECRET exploded")

    def forbidden(user, data):
        raise ForbiddenError("only on Tuesdays")

    async with serve(
        notes_resource, resources={"notes": {"guard": {"list": boom, "create": forbidden}}}
    ) as (_, plugin):
        async with connect(plugin.url) as client:
            with structlog.testing.capture_logs() as logs:
                error = await client.call("list", resource="notes")
            assert error["code"] == "INTERNAL_ERROR"
            assert error["errorId"] in error["message"]
            text = json.dumps(error)
            for leak in ("private-bucket", "AKIASECRET", "RuntimeError", "Traceback", "boom"):
                assert leak not in text
            logged = [e for e in logs if e.get("error_id") == error["errorId"]]
            assert logged and logged[0]["log_level"] == "error" and logged[0]["exc_info"]

            error = await client.call("insert", resource="notes", data={"title": "x"})
            assert error["code"] == "FORBIDDEN" and error["message"] == "only on Tuesdays"
            assert (await client.call("ping"))["type"] == "pong"


async def test_frame_above_max_message_size_closes_1009():
    async with serve(resources={}, max_message_size=1024) as (_, plugin):
        async with connect(plugin.url) as client:
            await client.send({"type": "ping", "pad": "x" * 900})
            assert (await client.recv())["type"] == "pong"
            await client.send({"type": "ping", "pad": "x" * 2000})
            code, _ = await client.closed()
            assert code == 1009
        async with connect(plugin.url) as other:
            assert (await other.call("ping"))["type"] == "pong"


async def test_shutdown_closes_every_socket_with_1001():
    async with serve(notes_resource, resources={"notes": True}) as (db, plugin):
        async with connect(plugin.url) as a, connect(plugin.url) as b:
            await a.call("subscribe", resource="notes")
            await db.disconnect()
            assert (await a.closed())[0] == 1001
            assert (await b.closed())[0] == 1001
        assert not plugin.connections and len(plugin.registry) == 0


async def test_large_frames_round_trip():
    """Events and replies of every frame-length encoding (7-bit, 16-bit, 64-bit)."""
    async with serve(notes_resource, resources={"notes": True}) as (_, plugin):
        async with connect(plugin.url) as writer, connect(plugin.url) as watcher:
            await watcher.call("subscribe", resource="notes")
            for size in (10, 300, 70_000, 300_000):
                ins = await writer.call(
                    "insert", resource="notes", data={"title": "t", "items": "x" * size}
                )
                assert len(ins["data"]["items"]) == size
                event = await watcher.next_event()
                assert event["data"] == ins["data"]


async def test_health_and_metrics():
    async with serve(notes_resource, resources={"notes": True}, metrics=True) as (_, plugin):
        async with connect(plugin.url) as client, aiohttp.ClientSession() as http:
            await client.call("subscribe", resource="notes")
            await client.call("bogus")
            async with http.get(f"{plugin.http_url}/health") as resp:
                assert resp.status == 200
                health = await resp.json()
            assert health["connections"] == 1 and health["subscriptions"] == 1
            assert health["store"] == {"reachable": True} and health["uptime"] >= 0
            async with http.get(f"{plugin.http_url}/metrics") as resp:
                assert resp.status == 200 and resp.content_type == "text/plain"
                text = await resp.text()
            assert "s3db_ws_connections 1.0" in text
            assert "s3db_ws_subscriptions 1.0" in text
            assert 's3db_ws_errors_total{code="UNKNOWN_MESSAGE_TYPE"} 1.0' in text
            assert "s3db_ws_frames_received_total 2.0" in text
            assert "s3db_ws_fanout_seconds_bucket" in text
            async with http.get(plugin.url.replace("ws://", "http://")) as resp:
                assert resp.status == 426


async def test_two_plugins_in_one_process_are_independent():
    async with serve(notes_resource, resources={"notes": True}) as (db1, p1):
        async with serve(notes_resource, resources={"notes": True}) as (_, p2):
            assert p1.port != p2.port
            async with connect(p1.url) as c1, connect(p2.url) as c2:
                await c1.call("subscribe", resource="notes")
                await c2.call("subscribe", resource="notes")
                await db1.resources.notes.insert({"title": "only db1"})
                assert (await c1.next_event())["data"]["title"] == "only db1"
                assert await c2.events() == []
            assert b"s3db_ws_changes_total" in p1.metrics.render()
            assert p1.metrics.registry is not p2.metrics.registry


async def test_heartbeat_closes_a_peer_that_never_answers_pings():
    async with serve(resources={}, heartbeat_interval=0.5) as (_, plugin):
        reader, writer = await asyncio.open_connection("127.0.0.1", plugin.port)
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert (await reader.readline()).startswith(b"HTTP/1.1 101")
        # Never answer the server's pings: it must drop the connection.
        await asyncio.wait_for(_read_until_eof(reader), 3)
        writer.close()
        assert not plugin.connections
        async with connect(plugin.url) as client:  # a client that answers pings stays
            await asyncio.sleep(1.2)  # two heartbeats, answered
            assert (await client.call("ping"))["type"] == "pong"


async def _read_until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(4096):
        pass


async def test_compression_is_negotiated_only_when_enabled():
    for enabled in (False, True):
        async with serve(notes_resource, resources={"notes": True}, compression=enabled) as (
            db,
            plugin,
        ):
            async with connect(plugin.url) as client:
                extensions = client.ws.protocol.extensions
                assert bool(extensions) is enabled
                await client.call("subscribe", resource="notes")
                await db.resources.notes.insert({"title": "squeeze", "items": "z" * 50_000})
                event = await client.next_event()
                assert event["data"]["items"] == "z" * 50_000


async def test_seed_style_options_and_extra_routes():
    async def hello(request):
        return aiohttp.web.Response(text="hi")

    rate = {"enabled": True, "maxRequests": 1, "windowMs": 60_000}
    async with serve(
        seed_style=True,
        resources={},
        rateLimit=rate,
        maxMessageSize=4096,
        routes=[aiohttp.web.get("/hello", hello)],
    ) as (_, plugin):
        assert plugin.max_message_size == 4096
        async with connect(plugin.url) as client:
            assert (await client.call("ping"))["type"] == "pong"
            assert (await client.call("ping"))["code"] == "RATE_LIMITED"
        async with aiohttp.ClientSession() as http, http.get(f"{plugin.http_url}/hello") as resp:
            assert await resp.text() == "hi"


@pytest.mark.parametrize(
    "options",
    [
        {"resources": {"notes": {"guard": {"read": lambda user, ctx: True}}}},
        {"resources": {"notes": {"guard": {"get": "yes"}}}},
        {"resources": {"notes": {"events": ["insert", "upsert"]}}},
        {"resources": {"notes": {"auth": [1, 2]}}},
        {"resources": {"notes": {"protected": ["a..b"]}}},
        {"resources": {"notes": {"secret": True}}},
        {"resources": {"notes": "yes"}},
        {"rate_limit": {"key": "planet"}},
        {"rate_limit": {"limiter": "nope"}},
        {"auth": {"drivers": [{"driver": "nope"}]}},
        {"rateLimitt": {}},
    ],
)
def test_bad_configuration_fails_at_construction(options):
    from s3db_ws_plugin import WebSocketPlugin

    with pytest.raises((ValueError, TypeError)):
        WebSocketPlugin(**options)


async def test_store_failures_are_internal_errors_without_details(monkeypatch):
    async with serve(notes_resource, resources={"notes": True}) as (db, plugin):

        async def down(*args, **kwargs):
            raise StorageError("http://10.0.0.5:9000/secret-bucket: connection refused")

        monkeypatch.setattr(db.storage, "get", down)
        monkeypatch.setattr(db.storage, "list", down)
        async with connect(plugin.url) as client, aiohttp.ClientSession() as http:
            error = await client.call("get", resource="notes", id="n1")
            assert error["code"] == "INTERNAL_ERROR"
            assert "secret-bucket" not in json.dumps(error) and "10.0.0.5" not in json.dumps(error)
            async with http.get(f"{plugin.http_url}/health") as resp:
                assert resp.status == 503
                health = await resp.json()
            assert health["status"] == "degraded" and health["store"] == {"reachable": False}
            assert "secret-bucket" not in json.dumps(health)
