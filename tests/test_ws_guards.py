"""Guards, role lists and protected fields, as a user sees them through the Python client.

Most tests here are written the way the README tells users to test their own guards: the
pytest plugin's fixtures start a plugin (``s3db_plugin_factory``, one config per test) and
``s3db_ws_plugin.client.Client`` talks to it, so a denial is a ``Forbidden``, a page is a
``Page`` and a change is an ``Event``.

The two tests in the "on the wire" section stay on the independent ``websockets`` library
because their subject is what crosses the wire, which the client cannot show: the raw text of
every reply and event frame (protected fields must not appear anywhere in it, not only in the
``data`` the client hands back), and refused subscribers receiving no event frame at all (the
client drops frames that match none of its subscriptions, so it would hide a leak).
"""

from __future__ import annotations

import json

import pytest
from client_helpers import TIMEOUT, received
from ws_helpers import JWT_AUTH, connect, make_token, notes_resource, serve

from s3db_core import ForbiddenError, NotFoundError
from s3db_ws_plugin.client import ClientError, Forbidden, InternalError, NotFound


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
    for id, tenant, owner in [
        ("p1", "t1", "alice"),
        ("p2", "t1", "bob"),
        ("p3", "t1", "alice"),
        ("q1", "t2", "zed"),
        ("q2", "t2", "zed"),
    ]:
        await db.resources.projects.insert(
            {"id": id, "name": id, "tenantId": tenant, "ownerId": owner}
        )


@pytest.fixture
async def s3db_database(ws_database):
    """Five projects in two tenants, and the notes resource (memory://, or each store of
    ``ws_store_url`` for the tests that ask for it)."""
    await projects(ws_database)
    await notes_resource(ws_database)
    return ws_database


@pytest.fixture
def start(s3db_database, s3db_plugin_factory, s3db_jwt_secret):
    """``plugin = await start(resources, required=True)``: a plugin over ``s3db_database``
    exposing ``resources``, accepting the JWTs of ``s3db_token``."""

    async def start(resources, *, required=True):
        auth = {
            "required": required,
            "drivers": [{"driver": "jwt", "config": {"secret": s3db_jwt_secret}}],
        }
        return await s3db_plugin_factory(s3db_database, resources=resources, auth=auth)

    return start


@pytest.fixture
def token(s3db_token):
    def make(sub, role="user", tenant="t1"):
        return s3db_token(sub, role=role, tenantId=tenant)

    return make


def variant(fn, kind):
    """The same guard as a plain function or as a coroutine function."""
    if kind == "sync":
        return fn

    async def guard(*args):
        return fn(*args)

    return guard


both = pytest.mark.parametrize("kind", ["sync", "async"])


def ids(page):
    return sorted(r["id"] for r in page.items)


@both
async def test_list_guard_allows_denies_and_overrides_the_filter(
    kind, start, s3db_client_factory, token
):
    def guard(user, ctx):
        assert ctx.user is user and ctx.db is not None
        if user.role == "banned":
            return False
        return {"tenantId": user.tenantId}

    plugin = await start({"projects": {"guard": {"list": variant(guard, kind)}}})
    alice = await s3db_client_factory(plugin, token("alice"))
    assert ids(await alice.list("projects")) == ["p1", "p2", "p3"]
    widened = await alice.list("projects", filter={"tenantId": "t2"})
    assert ids(widened) == ["p1", "p2", "p3"]
    narrowed = await alice.list("projects", filter={"ownerId": "zed"})
    assert ids(narrowed) == []
    own = await alice.list("projects", filter={"ownerId": "alice"})
    assert ids(own) == ["p1", "p3"]

    banned = await s3db_client_factory(plugin, token("mal", role="banned"))
    with pytest.raises(Forbidden):
        await banned.list("projects")


@both
async def test_subscribe_guard_overrides_and_cannot_be_widened(
    kind, s3db_database, start, s3db_client_factory, token
):
    def guard(user, filter):
        if user.role == "guest":
            return False
        return {**filter, "tenantId": user.tenantId}

    plugin = await start({"projects": {"guard": {"subscribe": variant(guard, kind)}}})
    alice = await s3db_client_factory(plugin, token("alice"))
    bob = await s3db_client_factory(plugin, token("bob"))
    guest = await s3db_client_factory(plugin, token("gus", role="guest"))

    no_filter = await alice.subscribe("projects")
    assert no_filter.effective_filter == {"tenantId": "t1"}
    widening = await bob.subscribe("projects", filter={"tenantId": "t2"})
    assert widening.effective_filter == {"tenantId": "t1"}
    with pytest.raises(Forbidden):
        await guest.subscribe("projects")
    assert len(plugin.registry) == 2  # nothing is left behind for the guest

    await s3db_database.resources.projects.insert({"name": "other tenant", "tenantId": "t2"})
    await s3db_database.resources.projects.insert({"name": "no tenant"})
    await s3db_database.resources.projects.insert({"name": "mine", "tenantId": "t1"})
    for sub in (no_filter, widening):
        assert [e.data["name"] for e in await received(sub)] == ["mine"]


async def test_seed_chat_subscribe_guard_requires_a_room(
    s3db_database, start, s3db_client_factory, token
):
    async def subscribe(user, filter):
        if not filter.get("roomId"):
            return False
        room = await s3db_database.resources.notes.get(filter["roomId"])
        return room["owner"] == user.id

    plugin = await start({"notes": {"guard": {"subscribe": subscribe}}})
    await s3db_database.resources.notes.insert({"id": "room1", "title": "room", "owner": "alice"})
    alice = await s3db_client_factory(plugin, token("alice"))
    with pytest.raises(Forbidden):
        await alice.subscribe("notes")
    room = await alice.subscribe("notes", filter={"roomId": "room1"})
    assert room.effective_filter == {"roomId": "room1"}
    with pytest.raises(NotFound):  # the guard's own NotFoundError
        await alice.subscribe("notes", filter={"roomId": "nope"})

    bob = await s3db_client_factory(plugin, token("bob"))
    with pytest.raises(Forbidden):
        await bob.subscribe("notes", filter={"roomId": "room1"})


@both
async def test_get_guard_sees_the_record_loaded_once(
    kind, ws_store_url, s3db_database, start, s3db_client_factory, token
):
    seen = []

    def owner_only(user, ctx):
        seen.append(ctx.record)
        return ctx.record is None or ctx.record["ownerId"] == user.id

    plugin = await start({"projects": {"guard": {"get": variant(owner_only, kind)}}})
    alice = await s3db_client_factory(plugin, token("alice"))
    s3db_database.storage.requests.reset()
    mine = await alice.get("projects", "p1")
    assert mine["id"] == "p1" and seen[-1]["id"] == "p1"
    assert s3db_database.storage.requests.snapshot() == {"GET": 1}
    with pytest.raises(Forbidden):
        await alice.get("projects", "p2")
    with pytest.raises(NotFound):
        await alice.get("projects", "nope")
    assert seen[-1] is None


async def test_get_guard_denial_hides_whether_a_record_exists(start, s3db_client_factory, token):
    plugin = await start({"projects": {"guard": {"get": lambda user, ctx: user.role == "admin"}}})
    alice = await s3db_client_factory(plugin, token("alice"))
    with pytest.raises(Forbidden) as exists:
        await alice.get("projects", "p1")
    with pytest.raises(Forbidden) as missing:
        await alice.get("projects", "nope")
    assert "p1" not in exists.value.message and "nope" not in missing.value.message

    admin = await s3db_client_factory(plugin, token("root", role="admin"))
    with pytest.raises(NotFound):
        await admin.get("projects", "nope")


@both
async def test_create_guard_mutations_are_written_and_denial_writes_nothing(
    kind, s3db_database, start, s3db_client_factory, token
):
    def create(user, data):
        data["tenantId"] = user.tenantId
        data["ownerId"] = user.id
        return user.role != "viewer"

    plugin = await start({"projects": {"guard": {"create": variant(create, kind)}}})
    alice = await s3db_client_factory(plugin, token("alice"))
    created = await alice.insert("projects", {"name": "new", "tenantId": "t2", "ownerId": "zed"})
    assert created["tenantId"] == "t1" and created["ownerId"] == "alice"
    stored = await s3db_database.resources.projects.get(created["id"])
    assert stored["tenantId"] == "t1" and stored["ownerId"] == "alice"

    viewer = await s3db_client_factory(plugin, token("vic", role="viewer"))
    before = await s3db_database.resources.projects.count()
    with pytest.raises(Forbidden):
        await viewer.insert("projects", {"name": "nope"})
    assert await s3db_database.resources.projects.count() == before


@both
async def test_update_guard_mutates_the_patch_and_reuses_the_loaded_record(
    kind, ws_store_url, s3db_database, start, s3db_client_factory, token
):
    def update(user, ctx):
        if ctx.data.get("acknowledged"):
            ctx.data["acknowledgedBy"] = user.id
        return ctx.record is not None and ctx.record["tenantId"] == user.tenantId

    plugin = await start({"projects": {"guard": {"update": variant(update, kind)}}})
    projects = s3db_database.resources.projects
    alice = await s3db_client_factory(plugin, token("alice"))
    s3db_database.storage.requests.reset()
    updated = await alice.update("projects", "p2", {"acknowledged": True})
    assert updated["acknowledgedBy"] == "alice" and updated["name"] == "p2"
    assert s3db_database.storage.requests.snapshot() == {"GET": 1, "PUT": 1}
    assert (await projects.get("p2"))["acknowledgedBy"] == "alice"

    with pytest.raises(Forbidden):
        await alice.update("projects", "q1", {"name": "x"})
    assert (await projects.get("q1"))["name"] == "q1"
    # The guard denies missing records too, so existence is not revealed.
    with pytest.raises(Forbidden):
        await alice.update("projects", "nope", {"name": "x"})


@both
async def test_delete_guard(kind, ws_store_url, s3db_database, start, s3db_client_factory, token):
    def delete(user, ctx):
        return ctx.record is None or (ctx.record["ownerId"] == user.id and user.role == "admin")

    plugin = await start({"projects": {"guard": {"delete": variant(delete, kind)}}})
    projects = s3db_database.resources.projects
    admin = await s3db_client_factory(plugin, token("alice", role="admin"))
    s3db_database.storage.requests.reset()
    gone = await admin.delete("projects", "p1")
    assert gone["id"] == "p1" and gone["name"] == "p1"
    assert s3db_database.storage.requests.snapshot() == {"GET": 1, "DELETE": 1}
    with pytest.raises(Forbidden):
        await admin.delete("projects", "p2")
    with pytest.raises(NotFound):
        await admin.delete("projects", "p1")

    user = await s3db_client_factory(plugin, token("alice"))
    with pytest.raises(Forbidden):
        await user.delete("projects", "p3")
    assert await projects.exists("p2") and await projects.exists("p3")


# What each guard kind guards, as a client call.
OPERATIONS = {
    "list": lambda client: client.list("projects"),
    "get": lambda client: client.get("projects", "p1"),
    "create": lambda client: client.insert("projects", {"name": "x"}),
    "update": lambda client: client.update("projects", "p1", {"name": "x"}),
    "delete": lambda client: client.delete("projects", "p1"),
    "subscribe": lambda client: client.subscribe("projects"),
}


@pytest.mark.parametrize("guard_kind", list(OPERATIONS))
@pytest.mark.parametrize(
    ("exception", "error_type"),
    [
        (ForbiddenError("not today"), Forbidden),
        (NotFoundError("no such room"), NotFound),
        (KeyError("internal detail"), InternalError),
    ],
)
async def test_guard_exceptions_map_to_codes(
    guard_kind, exception, error_type, s3db_database, start, s3db_client_factory, token
):
    async def guard(user, arg):
        raise exception

    plugin = await start({"projects": {"guard": {guard_kind: guard}}})
    alice = await s3db_client_factory(plugin, token("alice"))
    with pytest.raises(ClientError) as err:
        await OPERATIONS[guard_kind](alice)
    assert type(err.value) is error_type
    if error_type is InternalError:
        assert "internal detail" not in json.dumps(err.value.frame) and err.value.error_id
    else:
        assert err.value.message == str(exception)
    assert (await s3db_database.resources.projects.get("p1"))["name"] == "p1"
    assert await s3db_database.resources.projects.count() == 5
    assert len(plugin.registry) == 0


# The client has no call for "unsubscribe from everything on a resource": send the frame.
ROLE_OPERATIONS = [
    *OPERATIONS.values(),
    lambda client: client.request({"type": "unsubscribe", "resource": "projects"}),
]


async def test_role_lists_apply_to_every_operation_before_guards(start, s3db_client_factory, token):
    calls = []

    def guard(user, arg):
        calls.append(user)
        return True

    config = {"projects": {"auth": ["admin", "viewer"], "guard": {k: guard for k in OPERATIONS}}}
    plugin = await start(config, required=False)
    anonymous = await s3db_client_factory(plugin)
    wrong_role = await s3db_client_factory(plugin, token("uma", role="user"))
    for client in (anonymous, wrong_role):
        for operation in ROLE_OPERATIONS:
            with pytest.raises(Forbidden):
                await operation(client)
    assert calls == []
    assert len(plugin.registry) == 0  # on the wire: test_refused_subscribers_get_no_event_frames

    viewer = await s3db_client_factory(plugin, token("vera", role="viewer"))
    for operation in ROLE_OPERATIONS:
        await operation(viewer)  # raises on any error reply
    assert len(calls) == len(OPERATIONS)


PROTECTED = {"notes": {"protected": ["password", "profile.ssn", "items.secret"]}}
SECRETS = ("hunter2", "123-45-6789", "s3cr3t")
WITH_SECRETS = {
    "title": "doc",
    "password": "hunter2",
    "profile": {"ssn": "123-45-6789", "name": "Ann"},
    "items": [{"secret": "s3cr3t", "label": "a"}, {"label": "b"}],
}


def assert_clean(raw: str) -> None:
    for secret in SECRETS:
        assert secret not in raw
    assert "password" not in raw and "ssn" not in raw and '"secret"' not in raw


async def test_protected_fields_are_stripped_from_what_a_client_gets(
    s3db_database, start, s3db_client_factory
):
    plugin = await start(PROTECTED, required=False)
    client = await s3db_client_factory(plugin)
    watcher = await s3db_client_factory(plugin)
    sub = await watcher.subscribe("notes")

    note = await client.insert("notes", WITH_SECRETS)
    assert note["profile"] == {"name": "Ann"}
    assert note["items"] == [{"label": "a"}, {"label": "b"}]
    assert (await s3db_database.resources.notes.get(note["id"]))["password"] == "hunter2"
    records = [
        note,
        await client.get("notes", note["id"]),
        *(await client.list("notes")).items,
        await client.update("notes", note["id"], {"status": "x"}),
        await client.delete("notes", note["id"]),
    ]
    events = [await sub.next(timeout=TIMEOUT) for _ in range(3)]
    assert [e.event for e in events] == ["insert", "update", "delete"]
    for record in records + [e.data for e in events]:
        assert record["title"] == "doc"
        assert_clean(json.dumps(record))


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
async def test_filters_on_protected_fields_are_refused(filter, start, s3db_client_factory):
    plugin = await start(PROTECTED, required=False)
    client = await s3db_client_factory(plugin)
    with pytest.raises(Forbidden):
        await client.list("notes", filter=filter)
    with pytest.raises(Forbidden):
        await client.subscribe("notes", filter=filter)
    assert (await client.list("notes", filter={"profile.name": "Ann"})).items == []


# -- on the wire, with the independent `websockets` library -------------------------------------
async def test_protected_fields_never_leave_the_server(ws_store_url):
    """Raw: checks every byte of each reply and event, not only what the client hands back."""
    async with serve(notes_resource, url=ws_store_url, resources=PROTECTED) as (db, plugin):
        async with connect(plugin.url) as client, connect(plugin.url) as watcher:
            await watcher.call("subscribe", resource="notes")
            raw_replies = []

            async def raw_call(frame):
                await client.send(frame)
                raw = await client.ws.recv()
                raw_replies.append(raw)
                return json.loads(raw)

            inserted = await raw_call({"type": "insert", "resource": "notes", "data": WITH_SECRETS})
            id = inserted["data"]["id"]
            assert inserted["data"]["profile"] == {"name": "Ann"}
            assert inserted["data"]["items"] == [{"label": "a"}, {"label": "b"}]
            assert (await db.resources.notes.get(id))["password"] == "hunter2"  # stored, not sent
            await raw_call({"type": "get", "resource": "notes", "id": id})
            await raw_call({"type": "list", "resource": "notes"})
            await raw_call(
                {"type": "update", "resource": "notes", "id": id, "data": {"status": "x"}}
            )
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


@both
async def test_refused_subscribers_get_no_event_frames(kind):
    """Raw: a subscribe refused by the role list (anonymous, wrong role) or by the subscribe
    guard (guest) must leave nothing behind, so no event frame at all reaches those sockets.
    The Python client silently drops events that match none of its subscriptions."""

    def guard(user, filter):
        if user.role == "guest":
            return False
        return {**filter, "tenantId": user.tenantId}

    config = {
        "projects": {
            "auth": ["viewer", "guest"],
            "guard": {"subscribe": variant(guard, kind)},
        }
    }
    auth = {**JWT_AUTH, "required": False}
    async with serve(projects, resources=config, auth=auth) as (db, plugin):
        viewer_token = make_token("vera", role="viewer", tenantId="t1")
        async with (
            connect(plugin.url) as anonymous,
            connect(plugin.url, token=make_token("uma", role="user", tenantId="t1")) as user,
            connect(plugin.url, token=make_token("gus", role="guest", tenantId="t1")) as guest,
            connect(plugin.url, token=viewer_token) as viewer,
        ):
            for refused in (anonymous, user, guest):
                reply = await refused.call("subscribe", resource="projects")
                assert reply["code"] == "FORBIDDEN", reply
            assert (await viewer.call("subscribe", resource="projects"))["type"] == "subscribed"
            await db.resources.projects.insert({"name": "mine", "tenantId": "t1"})
            assert [e["data"]["name"] for e in await viewer.events()] == ["mine"]
            for refused in (anonymous, user, guest):
                assert await refused.events() == []
