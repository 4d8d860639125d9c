"""Guards, role lists and protected fields, as a client sees them over a real socket."""

from __future__ import annotations

import json

import pytest
from ws_helpers import JWT_AUTH, connect, make_token, notes_resource, serve

from s3db_core import ForbiddenError, NotFoundError


async def projects(db):
    await db.create_resource(
        "projects",
        {
            "name": "string|required",
            "tenantId": "string|optional",
            "ownerId": "string|optional",
            "acknowledged": "boolean|optional",
            "acknowledgedBy": "string|optional",
        },
    )
    for id, tenant, owner in [("p1", "t1", "alice"), ("p2", "t1", "bob"), ("p3", "t1", "alice"),
                              ("q1", "t2", "zed"), ("q2", "t2", "zed")]:
        await db.resources.projects.insert({"id": id, "name": id, "tenantId": tenant, "ownerId": owner})


def token(sub, role="user", tenant="t1"):
    return make_token(sub, role=role, tenantId=tenant)


def variant(fn, kind):
    """The same guard as a plain function or as a coroutine function."""
    if kind == "sync":
        return fn

    async def guard(*args):
        return fn(*args)

    return guard


both = pytest.mark.parametrize("kind", ["sync", "async"])


def ids(reply):
    return sorted(r["id"] for r in reply["data"])


@both
async def test_list_guard_allows_denies_and_overrides_the_filter(kind):
    def guard(user, ctx):
        assert ctx.user is user and ctx.db is not None
        if user.role == "banned":
            return False
        return {"tenantId": user.tenantId}

    config = {"projects": {"guard": {"list": variant(guard, kind)}}}
    async with serve(projects, resources=config, auth=JWT_AUTH) as (_, plugin):
        async with connect(plugin.url, token=token("alice")) as client:
            assert ids(await client.call("list", resource="projects")) == ["p1", "p2", "p3"]
            widened = await client.call("list", resource="projects", filter={"tenantId": "t2"})
            assert ids(widened) == ["p1", "p2", "p3"]
            narrowed = await client.call("list", resource="projects", filter={"ownerId": "zed"})
            assert ids(narrowed) == []
            own = await client.call("list", resource="projects", filter={"ownerId": "alice"})
            assert ids(own) == ["p1", "p3"]
        async with connect(plugin.url, token=token("mal", role="banned")) as client:
            assert (await client.call("list", resource="projects"))["code"] == "FORBIDDEN"


@both
async def test_subscribe_guard_overrides_and_cannot_be_widened(kind):
    def guard(user, filter):
        if user.role == "guest":
            return False
        return {**filter, "tenantId": user.tenantId}

    config = {"projects": {"guard": {"subscribe": variant(guard, kind)}}}
    async with serve(projects, resources=config, auth=JWT_AUTH) as (db, plugin):
        async with (
            connect(plugin.url, token=token("alice")) as no_filter,
            connect(plugin.url, token=token("bob")) as widening,
            connect(plugin.url, token=token("gus", role="guest")) as guest,
        ):
            sub = await no_filter.call("subscribe", resource="projects")
            assert sub["filter"] == {"tenantId": "t1"}
            sub = await widening.call("subscribe", resource="projects", filter={"tenantId": "t2"})
            assert sub["filter"] == {"tenantId": "t1"}
            assert (await guest.call("subscribe", resource="projects"))["code"] == "FORBIDDEN"
            assert len(plugin.registry) == 2

            await db.resources.projects.insert({"name": "other tenant", "tenantId": "t2"})
            await db.resources.projects.insert({"name": "no tenant"})
            await db.resources.projects.insert({"name": "mine", "tenantId": "t1"})
            for client in (no_filter, widening):
                assert [e["data"]["name"] for e in await client.events()] == ["mine"]
            assert await guest.events() == []


async def test_seed_chat_subscribe_guard_requires_a_room():
    async def subscribe(user, filter):
        if not filter.get("roomId"):
            return False
        room = await db_holder["db"].resources.notes.get(filter["roomId"])
        return room["owner"] == user.id

    db_holder = {}
    async with serve(
        notes_resource, resources={"notes": {"guard": {"subscribe": subscribe}}}, auth=JWT_AUTH
    ) as (db, plugin):
        db_holder["db"] = db
        await db.resources.notes.insert({"id": "room1", "title": "room", "owner": "alice"})
        async with connect(plugin.url, token=token("alice")) as client:
            assert (await client.call("subscribe", resource="notes"))["code"] == "FORBIDDEN"
            ok = await client.call("subscribe", resource="notes", filter={"roomId": "room1"})
            assert ok["type"] == "subscribed"
            missing = await client.call("subscribe", resource="notes", filter={"roomId": "nope"})
            assert missing["code"] == "NOT_FOUND"  # the guard's own NotFoundError
        async with connect(plugin.url, token=token("bob")) as client:
            denied = await client.call("subscribe", resource="notes", filter={"roomId": "room1"})
            assert denied["code"] == "FORBIDDEN"


@both
async def test_get_guard_sees_the_record_loaded_once(kind, ws_store_url):
    seen = []

    def owner_only(user, ctx):
        seen.append(ctx.record)
        return ctx.record is None or ctx.record["ownerId"] == user.id

    config = {"projects": {"guard": {"get": variant(owner_only, kind)}}}
    async with serve(projects, url=ws_store_url, resources=config, auth=JWT_AUTH) as (db, plugin):
        async with connect(plugin.url, token=token("alice")) as client:
            db.storage.requests.reset()
            mine = await client.call("get", resource="projects", id="p1")
            assert mine["data"]["id"] == "p1" and seen[-1]["id"] == "p1"
            assert db.storage.requests.snapshot() == {"GET": 1}
            assert (await client.call("get", resource="projects", id="p2"))["code"] == "FORBIDDEN"
            missing = await client.call("get", resource="projects", id="nope")
            assert missing["code"] == "NOT_FOUND" and seen[-1] is None


async def test_get_guard_denial_hides_whether_a_record_exists():
    config = {"projects": {"guard": {"get": lambda user, ctx: user.role == "admin"}}}
    async with serve(projects, resources=config, auth=JWT_AUTH) as (_, plugin):
        async with connect(plugin.url, token=token("alice")) as client:
            exists = await client.call("get", resource="projects", id="p1")
            missing = await client.call("get", resource="projects", id="nope")
            assert exists["code"] == missing["code"] == "FORBIDDEN"
            assert "p1" not in exists["message"] and "nope" not in missing["message"]
        async with connect(plugin.url, token=token("root", role="admin")) as admin:
            assert (await admin.call("get", resource="projects", id="nope"))["code"] == "NOT_FOUND"


@both
async def test_create_guard_mutations_are_written_and_denial_writes_nothing(kind):
    def create(user, data):
        data["tenantId"] = user.tenantId
        data["ownerId"] = user.id
        return user.role != "viewer"

    config = {"projects": {"guard": {"create": variant(create, kind)}}}
    async with serve(projects, resources=config, auth=JWT_AUTH) as (db, plugin):
        async with connect(plugin.url, token=token("alice")) as client:
            reply = await client.call(
                "insert", resource="projects", data={"name": "new", "tenantId": "t2", "ownerId": "zed"}
            )
            assert reply["data"]["tenantId"] == "t1" and reply["data"]["ownerId"] == "alice"
            stored = await db.resources.projects.get(reply["data"]["id"])
            assert stored["tenantId"] == "t1" and stored["ownerId"] == "alice"
        async with connect(plugin.url, token=token("vic", role="viewer")) as viewer:
            before = await db.resources.projects.count()
            denied = await viewer.call("insert", resource="projects", data={"name": "nope"})
            assert denied["code"] == "FORBIDDEN"
            assert await db.resources.projects.count() == before


@both
async def test_update_guard_mutates_the_patch_and_reuses_the_loaded_record(kind, ws_store_url):
    def update(user, ctx):
        if ctx.data.get("acknowledged"):
            ctx.data["acknowledgedBy"] = user.id
        return ctx.record is not None and ctx.record["tenantId"] == user.tenantId

    config = {"projects": {"guard": {"update": variant(update, kind)}}}
    async with serve(projects, url=ws_store_url, resources=config, auth=JWT_AUTH) as (db, plugin):
        async with connect(plugin.url, token=token("alice")) as client:
            db.storage.requests.reset()
            reply = await client.call("update", resource="projects", id="p2", data={"acknowledged": True})
            assert reply["type"] == "updated"
            assert reply["data"]["acknowledgedBy"] == "alice" and reply["data"]["name"] == "p2"
            assert db.storage.requests.snapshot() == {"GET": 1, "PUT": 1}
            assert (await db.resources.projects.get("p2"))["acknowledgedBy"] == "alice"

            denied = await client.call("update", resource="projects", id="q1", data={"name": "x"})
            assert denied["code"] == "FORBIDDEN"
            assert (await db.resources.projects.get("q1"))["name"] == "q1"
            # The guard denies missing records too, so existence is not revealed.
            missing = await client.call("update", resource="projects", id="nope", data={"name": "x"})
            assert missing["code"] == "FORBIDDEN"


@both
async def test_delete_guard(kind, ws_store_url):
    def delete(user, ctx):
        return ctx.record is None or (ctx.record["ownerId"] == user.id and user.role == "admin")

    config = {"projects": {"guard": {"delete": variant(delete, kind)}}}
    async with serve(projects, url=ws_store_url, resources=config, auth=JWT_AUTH) as (db, plugin):
        async with connect(plugin.url, token=token("alice", role="admin")) as admin:
            db.storage.requests.reset()
            gone = await admin.call("delete", resource="projects", id="p1")
            assert gone["type"] == "deleted" and gone["id"] == "p1"
            assert db.storage.requests.snapshot() == {"GET": 1, "DELETE": 1}
            assert (await admin.call("delete", resource="projects", id="p2"))["code"] == "FORBIDDEN"
            assert (await admin.call("delete", resource="projects", id="p1"))["code"] == "NOT_FOUND"
        async with connect(plugin.url, token=token("alice")) as user:
            assert (await user.call("delete", resource="projects", id="p3"))["code"] == "FORBIDDEN"
        assert await db.resources.projects.exists("p2") and await db.resources.projects.exists("p3")


OPERATIONS = {
    "list": {"type": "list"},
    "get": {"type": "get", "id": "p1"},
    "create": {"type": "insert", "data": {"name": "x"}},
    "update": {"type": "update", "id": "p1", "data": {"name": "x"}},
    "delete": {"type": "delete", "id": "p1"},
    "subscribe": {"type": "subscribe"},
}


@pytest.mark.parametrize("guard_kind", list(OPERATIONS))
@pytest.mark.parametrize(
    ("exception", "code"),
    [
        (ForbiddenError("not today"), "FORBIDDEN"),
        (NotFoundError("no such room"), "NOT_FOUND"),
        (KeyError("internal detail"), "INTERNAL_ERROR"),
    ],
)
async def test_guard_exceptions_map_to_codes(guard_kind, exception, code):
    async def guard(user, arg):
        raise exception

    config = {"projects": {"guard": {guard_kind: guard}}}
    async with serve(projects, resources=config, auth=JWT_AUTH) as (db, plugin):
        async with connect(plugin.url, token=token("alice")) as client:
            reply = await client.request({**OPERATIONS[guard_kind], "resource": "projects"})
            assert reply["type"] == "error" and reply["code"] == code
            if code == "INTERNAL_ERROR":
                assert "internal detail" not in json.dumps(reply) and reply["errorId"]
            else:
                assert reply["message"] == str(exception)
        assert (await db.resources.projects.get("p1"))["name"] == "p1"
        assert await db.resources.projects.count() == 5
        assert len(plugin.registry) == 0


ROLE_OPERATIONS = [*OPERATIONS.values(), {"type": "unsubscribe"}]


async def test_role_lists_apply_to_every_operation_before_guards():
    calls = []

    def guard(user, arg):
        calls.append(user)
        return True

    config = {"projects": {"auth": ["admin", "viewer"], "guard": {k: guard for k in OPERATIONS}}}
    auth = {**JWT_AUTH, "required": False}
    async with serve(projects, resources=config, auth=auth) as (db, plugin):
        async with (
            connect(plugin.url) as anonymous,
            connect(plugin.url, token=token("uma", role="user")) as wrong_role,
        ):
            for client in (anonymous, wrong_role):
                for frame in ROLE_OPERATIONS:
                    reply = await client.request({**frame, "resource": "projects"})
                    assert reply["code"] == "FORBIDDEN", (frame, reply)
            assert calls == []
            await db.resources.projects.insert({"name": "after"})
            assert await anonymous.events() == [] and await wrong_role.events() == []

        async with connect(plugin.url, token=token("vera", role="viewer")) as viewer:
            for frame in ROLE_OPERATIONS:
                reply = await viewer.request({**frame, "resource": "projects"})
                assert reply["type"] != "error", (frame, reply)
            assert len(calls) == len(OPERATIONS)


PROTECTED = {"notes": {"protected": ["password", "profile.ssn", "items.secret"]}}
SECRETS = ("hunter2", "123-45-6789", "s3cr3t")


def assert_clean(raw: str) -> None:
    for secret in SECRETS:
        assert secret not in raw
    assert "password" not in raw and "ssn" not in raw and '"secret"' not in raw


async def test_protected_fields_never_leave_the_server(ws_store_url):
    record = {
        "title": "doc",
        "password": "hunter2",
        "profile": {"ssn": "123-45-6789", "name": "Ann"},
        "items": [{"secret": "s3cr3t", "label": "a"}, {"label": "b"}],
    }
    async with serve(notes_resource, url=ws_store_url, resources=PROTECTED) as (db, plugin):
        async with connect(plugin.url) as client, connect(plugin.url) as watcher:
            await watcher.call("subscribe", resource="notes")
            raw_replies = []

            async def raw_call(frame):
                await client.send(frame)
                raw = await client.ws.recv()
                raw_replies.append(raw)
                return json.loads(raw)

            inserted = await raw_call({"type": "insert", "resource": "notes", "data": record})
            id = inserted["data"]["id"]
            assert inserted["data"]["profile"] == {"name": "Ann"}
            assert inserted["data"]["items"] == [{"label": "a"}, {"label": "b"}]
            assert (await db.resources.notes.get(id))["password"] == "hunter2"  # stored, not sent
            await raw_call({"type": "get", "resource": "notes", "id": id})
            await raw_call({"type": "list", "resource": "notes"})
            await raw_call({"type": "update", "resource": "notes", "id": id, "data": {"status": "x"}})
            deleted = await raw_call({"type": "delete", "resource": "notes", "id": id})
            assert deleted["type"] == "deleted" and deleted["id"] == id
            for raw in raw_replies:
                assert '"error"' not in raw
                assert_clean(raw)

            await client.call("ping")
            raw_events = []
            for _ in range(3):
                raw_events.append(await watcher.ws.recv())
            assert [json.loads(r)["event"] for r in raw_events] == ["insert", "update", "delete"]
            for raw in raw_events:
                assert_clean(raw)



@pytest.mark.parametrize(
    "filter",
    [
        {"password": "hunter2"},
        {"password": {"$exists": True}},
        {"profile.ssn": {"$gt": "1"}},
        {"profile": {"ssn": "123-45-6789", "name": "Ann"}},
        {"items.0.secret": "s3cr3t"},
        {"items[]": {"secret": "s3cr3t", "label": "a"}},
    ],
)
async def test_filters_on_protected_fields_are_refused(filter):
    async with serve(notes_resource, resources=PROTECTED) as (_, plugin):
        async with connect(plugin.url) as client:
            for kind in ("list", "subscribe"):
                reply = await client.call(kind, resource="notes", filter=filter)
                assert reply["code"] == "FORBIDDEN", reply
            ok = await client.call("list", resource="notes", filter={"profile.name": "Ann"})
            assert ok["type"] == "data"
