"""The read rule and the `leave` event, as the frames on the wire show them.

A resource's `read` option decides what each connection may see: get answers NOT_FOUND for a
record it may not read (exactly like a missing one), list leaves such records out, and no event
carries one. When an update takes a record out of a connection's access (a room made private, a
collaborator removed), that connection gets `event leave {id}` and nothing of the new record,
on the very change that removes it.

These tests use the independent `websockets` client because their subject is what crosses the
wire: a leak shows up in the raw text of any frame, which a client library would hide.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from client_helpers import received
from ws_helpers import JWT_AUTH, connect, make_token, serve

from s3db_core.query import compile_filter
from s3db_ws_plugin.guards import ReadRule, ResourcePolicy

PUBLIC_OR_MEMBER = {"$or": [{"isPrivate": False}, {"members[]": "$user.id"}]}


async def rooms(db):
    await db.create_resource(
        "rooms",
        {
            "name": "string|required",
            "isPrivate": "boolean|default:false",
            "members": "array|items:string|optional",
            "tenantId": "string|optional",
            "ownerId": "string|optional",
        },
    )


def tenant_only(user, filter):
    return {"tenantId": user.tenantId}


def config(read: Any = PUBLIC_OR_MEMBER, **options: Any) -> dict[str, Any]:
    return {"rooms": {"read": read, **options}}


def raw(frames: list[dict[str, Any]]) -> str:
    return json.dumps(frames)


async def test_get_of_a_record_the_rule_hides_answers_exactly_like_a_missing_one():
    async with serve(rooms, resources=config(), auth=JWT_AUTH) as (db, plugin):
        secret = await db.resources.rooms.insert(
            {"name": "war room", "isPrivate": True, "members": ["alice"]}
        )
        async with connect(plugin.url, token=make_token("bob")) as bob:
            hidden = await bob.call("get", resource="rooms", id=secret["id"])
            missing = await bob.call("get", resource="rooms", id="X" * len(secret["id"]))
            assert hidden["code"] == missing["code"] == "NOT_FOUND"
            # Same frame but for the id itself: nothing tells the two apart.
            assert hidden["message"].replace(secret["id"], "?") == missing["message"].replace(
                "X" * len(secret["id"]), "?"
            )
            assert set(hidden) == set(missing)
            # Nor can the record be changed or deleted through the socket.
            for frame in (
                {"type": "update", "id": secret["id"], "data": {"name": "mine"}},
                {"type": "delete", "id": secret["id"]},
            ):
                answer = await bob.request({**frame, "resource": "rooms"})
                assert answer["code"] == "NOT_FOUND"
        assert (await db.resources.rooms.get(secret["id"]))["name"] == "war room"
        async with connect(plugin.url, token=make_token("alice")) as alice:
            found = await alice.call("get", resource="rooms", id=secret["id"])
            assert found["data"]["name"] == "war room"


async def test_list_leaves_out_what_the_rule_hides():
    async with serve(rooms, resources=config(), auth=JWT_AUTH) as (db, plugin):
        for name, private, members in [
            ("lobby", False, []),
            ("alice+bob", True, ["alice", "bob"]),
            ("alice only", True, ["alice"]),
            ("garden", False, ["carol"]),
        ]:
            await db.resources.rooms.insert({"name": name, "isPrivate": private, "members": members})
        async with connect(plugin.url, token=make_token("bob")) as bob:
            page = await bob.call("list", resource="rooms")
            assert [r["name"] for r in page["data"]] == ["lobby", "alice+bob", "garden"]
            assert "alice only" not in raw([page])
            # A client filter cannot widen it: asking for private rooms gives bob's own only.
            page = await bob.call("list", resource="rooms", filter={"isPrivate": True})
            assert [r["name"] for r in page["data"]] == ["alice+bob"]


async def test_anonymous_connections_see_only_what_needs_no_claim():
    auth = {**JWT_AUTH, "required": False}
    async with serve(rooms, resources=config(), auth=auth) as (db, plugin):
        await db.resources.rooms.insert({"name": "open", "isPrivate": False})
        await db.resources.rooms.insert({"name": "closed", "isPrivate": True, "members": []})
        async with connect(plugin.url) as anon:
            page = await anon.call("list", resource="rooms")
            assert [r["name"] for r in page["data"]] == ["open"]


async def test_events_reach_only_connections_that_may_read_the_record():
    async with serve(rooms, resources=config(), auth=JWT_AUTH) as (db, plugin):
        async with (
            connect(plugin.url, token=make_token("alice")) as alice,
            connect(plugin.url, token=make_token("bob")) as bob,
        ):
            for client in (alice, bob):
                assert (await client.call("subscribe", resource="rooms"))["type"] == "subscribed"
            secret = await db.resources.rooms.insert(
                {"name": "secret plans", "isPrivate": True, "members": ["alice"]}
            )
            await db.resources.rooms.update(secret["id"], {"name": "still secret"})
            await db.resources.rooms.delete(secret["id"])
            await db.resources.rooms.insert({"name": "public news", "isPrivate": False})
            seen_by_bob = await bob.sync()
            assert [(f["event"], f["data"]["name"]) for f in seen_by_bob] == [
                ("insert", "public news")
            ]
            assert "secret" not in raw(seen_by_bob)
            seen_by_alice = [(f["event"], f["data"]["name"]) for f in await alice.events()]
            assert seen_by_alice == [
                ("insert", "secret plans"),
                ("update", "still secret"),
                ("delete", "still secret"),
                ("insert", "public news"),
            ]


async def test_a_room_made_private_sends_leave_and_nothing_of_its_new_content():
    """Chat: a non-member subscribed to public rooms must not receive the update that makes a
    room private, with its new name and member list."""
    async with serve(rooms, resources=config(), auth=JWT_AUTH) as (db, plugin):
        room = await db.resources.rooms.insert({"name": "general", "isPrivate": False})
        async with (
            connect(plugin.url, token=make_token("alice")) as alice,
            connect(plugin.url, token=make_token("bob")) as bob,
        ):
            await alice.call("subscribe", resource="rooms")
            await bob.call("subscribe", resource="rooms", filter={"isPrivate": False})
            await db.resources.rooms.update(
                room["id"],
                {"name": "alice's hideout", "isPrivate": True, "members": ["alice", "dave"]},
            )
            frames = await bob.sync()
            assert frames == [
                {
                    "type": "event",
                    "resource": "rooms",
                    "event": "leave",
                    "data": {"id": room["id"]},
                    "timestamp": frames[0]["timestamp"],
                    "version": 2,  # a position like any event's: a resume continues after it
                    "offset": frames[0]["offset"],
                    "epoch": frames[0]["epoch"],
                }
            ]
            assert "hideout" not in raw(frames) and "dave" not in raw(frames)
            [update] = await alice.events()
            assert update["event"] == "update" and update["data"]["name"] == "alice's hideout"
            # Once out of bob's access, later changes to it do not reach him at all.
            await db.resources.rooms.update(room["id"], {"name": "renamed again"})
            assert await bob.sync() == []
            # Made public again, it comes back as an update (it matches his filter again).
            await db.resources.rooms.update(room["id"], {"isPrivate": False})
            [back] = await bob.events()
            assert back["event"] == "update" and back["data"]["name"] == "renamed again"


async def test_a_removed_collaborator_gets_leave_on_the_change_that_removes_them():
    """Collab: the removal update (new title, collaborator list) must not reach the removed
    collaborator; access ends on that very change."""

    def collaborator(user, record):
        return user is not None and user.id in (record.get("members") or [])

    async with serve(rooms, resources=config(read=collaborator), auth=JWT_AUTH) as (db, plugin):
        doc = await db.resources.rooms.insert({"name": "draft", "members": ["ann", "ben"]})
        async with connect(plugin.url, token=make_token("ben")) as ben:
            await ben.call("subscribe", resource="rooms", filter={"id": doc["id"]})
            await db.resources.rooms.update(doc["id"], {"name": "ann's plan", "members": ["ann"]})
            frames = await ben.sync()
            assert [(f["event"], f["data"]) for f in frames] == [("leave", {"id": doc["id"]})]
            assert "plan" not in raw(frames)
            await db.resources.rooms.delete(doc["id"])
            assert await ben.sync() == []


async def test_leaving_only_the_clients_own_selection_still_sends_the_update():
    """The seed's DashboardClient, subscribed to unacknowledged alerts, sees its alert become
    acknowledged: the selection part is the client's, not an access decision."""
    async with serve(rooms, resources=config(), auth=JWT_AUTH) as (db, plugin):
        room = await db.resources.rooms.insert({"name": "a", "isPrivate": False})
        async with connect(plugin.url, token=make_token("bob")) as bob:
            await bob.call("subscribe", resource="rooms", filter={"name": "a"})
            await db.resources.rooms.update(room["id"], {"name": "b"})
            [event] = await bob.events()
            assert event["event"] == "update" and event["data"]["name"] == "b"


async def test_a_record_leaving_the_guards_imposed_keys_sends_leave():
    """The access part includes what a subscribe guard imposed: a record moved to another
    tenant leaves the first tenant's subscribers with its id only."""
    resources = {"rooms": {"guard": {"subscribe": tenant_only}}}
    async with serve(rooms, resources=resources, auth=JWT_AUTH) as (db, plugin):
        room = await db.resources.rooms.insert({"name": "shared", "tenantId": "t1"})
        async with connect(plugin.url, token=make_token("tia", tenantId="t1")) as tia:
            reply = await tia.call("subscribe", resource="rooms", filter={"tenantId": "t2"})
            assert reply["filter"] == {"tenantId": "t1"}
            await db.resources.rooms.update(room["id"], {"name": "sold", "tenantId": "t2"})
            frames = await tia.sync()
            assert [(f["event"], f["data"]) for f in frames] == [("leave", {"id": room["id"]})]
            assert "sold" not in raw(frames)


async def test_one_frame_per_change_and_the_update_wins_over_leave():
    resources = {"rooms": {"guard": {"subscribe": tenant_only}}}
    async with serve(rooms, resources=resources, auth=JWT_AUTH) as (db, plugin):
        room = await db.resources.rooms.insert({"name": "x", "tenantId": "t1", "ownerId": "o"})
        async with connect(plugin.url, token=make_token("tia", tenantId="t1")) as tia:
            await tia.call("subscribe", resource="rooms", filter={"ownerId": "o"})
            await tia.call("subscribe", resource="rooms", filter={"name": "x"})
            # Still in t1: one update frame though both subscriptions matched the before-image.
            await db.resources.rooms.update(room["id"], {"name": "y"})
            assert [f["event"] for f in await tia.sync()] == ["update"]


async def test_a_failing_read_rule_hides_the_record_and_spares_the_others():
    def picky(user, record):
        if user.id == "grumpy":
            raise RuntimeError("rule bug")
        return True

    async with serve(rooms, resources=config(read=picky), auth=JWT_AUTH) as (db, plugin):
        async with (
            connect(plugin.url, token=make_token("grumpy")) as grumpy,
            connect(plugin.url, token=make_token("happy")) as happy,
        ):
            for client in (grumpy, happy):
                await client.call("subscribe", resource="rooms")
            room = await db.resources.rooms.insert({"name": "r"})
            assert await grumpy.sync() == []
            assert [f["data"]["name"] for f in await happy.events()] == ["r"]
            answer = await grumpy.call("get", resource="rooms", id=room["id"])
            assert answer["code"] == "NOT_FOUND"


async def test_a_refreshed_token_rebinds_the_rule_to_its_claims():
    template = {"tenantId": "$user.tenantId"}
    async with serve(rooms, resources=config(read=template), auth=JWT_AUTH) as (db, plugin):
        async with connect(plugin.url, token=make_token("kim", tenantId="t1")) as kim:
            await kim.call("subscribe", resource="rooms")
            await db.resources.rooms.insert({"name": "one", "tenantId": "t1"})
            assert [f["data"]["name"] for f in await kim.events()] == ["one"]
            answer = await kim.call("auth", token=make_token("kim", tenantId="t2"))
            assert answer["type"] == "authenticated"
            await db.resources.rooms.insert({"name": "two", "tenantId": "t1"})
            await db.resources.rooms.insert({"name": "three", "tenantId": "t2"})
            assert [f["data"]["name"] for f in await kim.events()] == ["three"]


# -- the rule itself, without sockets -----------------------------------------------------------
class _User(dict):
    @property
    def id(self) -> str:
        return self["id"]


def test_a_template_binds_claims_and_a_missing_claim_equals_nothing():
    rule = ReadRule("rooms", {"ownerId": "$user.id", "tenantId": {"$in": ["$user.tenantId", "x"]}})
    alice = _User(id="alice", tenantId="t1")
    assert rule.bind(alice)({"ownerId": "alice", "tenantId": "t1"})
    assert not rule.bind(alice)({"ownerId": "bob", "tenantId": "t1"})
    # No tenantId claim: only the literal "x" is left in the $in.
    no_tenant = rule.bind(_User(id="alice"))
    assert not no_tenant({"ownerId": "alice", "tenantId": None})
    assert not no_tenant({"ownerId": "alice"})
    assert no_tenant({"ownerId": "alice", "tenantId": "x"})
    # Anonymous: an owner-only rule matches no record, not even those without an owner.
    assert not rule.bind(None)({})


@pytest.mark.parametrize("bad", [{"a": {"$regex": "x"}}, "isPrivate", 5])
def test_a_malformed_rule_is_a_configuration_error(bad):
    with pytest.raises(ValueError, match="read"):
        ResourcePolicy.from_config("rooms", {"read": bad})


def test_a_deeply_nested_record_does_not_break_the_fan_out_decision():
    policy = ResourcePolicy.from_config("rooms", {"read": PUBLIC_OR_MEMBER, "protected": ["a.b"]})
    deep: Any = {"b": "secret", "keep": 1}
    for _ in range(5000):
        deep = [deep]
    record = {"id": "r1", "isPrivate": False, "a": deep, "members": deep}
    assert policy.read is not None and policy.read.bind(_User(id="u"))(record)
    # Protected paths apply inside lists: the 5,000 lists under "a" are copied level by level.
    stripped = policy.protected.strip(record)
    depth, node, original = 0, stripped["a"], deep
    while isinstance(node, list):
        assert node is not original
        depth, node, original = depth + 1, node[0], original[0]
    assert (depth, node) == (5000, {"keep": 1})


# -- what the product's clients hand to the app ---------------------------------------------------
async def test_the_python_client_hands_leave_to_the_subscription(
    ws_database, s3db_plugin_factory, s3db_client_factory, s3db_token, s3db_jwt_secret
):
    await rooms(ws_database)
    auth = {"required": True, "drivers": [{"driver": "jwt", "config": {"secret": s3db_jwt_secret}}]}
    plugin = await s3db_plugin_factory(ws_database, resources=config(), auth=auth)
    room = await ws_database.resources.rooms.insert({"name": "general", "isPrivate": False})
    client = await s3db_client_factory(plugin, s3db_token("bob"))
    everything = await client.subscribe("rooms", filter={"isPrivate": False})
    updates_only = await client.subscribe("rooms", events=["update"])
    await ws_database.resources.rooms.update(room["id"], {"isPrivate": True, "members": ["al"]})
    for sub in (everything, updates_only):
        assert [(e.event, e.data) for e in await received(sub)] == [("leave", {"id": room["id"]})]


async def test_a_writer_is_shown_only_the_id_of_a_result_it_may_not_read():
    async with serve(rooms, resources=config(), auth=JWT_AUTH) as (db, plugin):
        async with connect(plugin.url, token=make_token("bob")) as bob:
            made = await bob.call(
                "insert", resource="rooms", data={"name": "for others", "isPrivate": True}
            )
            assert made["type"] == "inserted" and made["data"] == {"id": made["data"]["id"]}
            public = await bob.call("insert", resource="rooms", data={"name": "open"})
            assert public["data"]["name"] == "open"
            hidden = await bob.call(
                "update",
                resource="rooms",
                id=public["data"]["id"],
                data={"isPrivate": True, "members": ["carol"]},
            )
            assert hidden["type"] == "updated" and hidden["data"] == {"id": public["data"]["id"]}
            stored = await db.resources.rooms.get(public["data"]["id"])
            assert stored["members"] == ["carol"]


def test_a_clients_or_narrows_a_guards_or_instead_of_being_replaced():
    from s3db_ws_plugin.guards import merge_filter

    guard = {"$or": [{"isPrivate": False}, {"members[]": "bob"}]}
    client = {"$or": [{"name": "a"}, {"name": "b"}], "tenantId": "t1"}
    effective = merge_filter(client, guard)
    assert effective["$or"] == guard["$or"] and effective["tenantId"] == "t1"
    predicate = compile_filter(effective)
    assert predicate({"name": "a", "tenantId": "t1", "isPrivate": False})
    assert not predicate({"name": "c", "tenantId": "t1", "isPrivate": False})  # client's $or
    assert not predicate({"name": "a", "tenantId": "t1", "isPrivate": True})  # guard's $or
    # Plain keys are still replaced by the guard's.
    assert merge_filter({"tenantId": "t2"}, {"tenantId": "t1"}) == {"tenantId": "t1"}


def test_a_template_may_compare_with_claims_and_take_a_claim_as_a_list():
    rule = ReadRule("rooms", {"level": {"$lte": "$user.level"}, "roomId": {"$in": "$user.rooms"}})
    reader = _User(id="al", level=3, rooms=["r1", "r2"])
    assert rule.bind(reader)({"level": 2, "roomId": "r2"})
    assert not rule.bind(reader)({"level": 4, "roomId": "r2"})
    assert not rule.bind(reader)({"level": 2, "roomId": "r3"})
    # Anonymous, or a claim of the wrong type: sees nothing (fail closed).
    assert not rule.bind(None)({"level": 0, "roomId": "r1"})
    assert not rule.bind(_User(id="x", level="high", rooms="r1"))({"level": 0, "roomId": "r1"})
