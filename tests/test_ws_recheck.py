"""``plugin.recheck()``: open subscriptions go through their guard again when access changes,
and the ones no longer allowed are revoked with ``error FORBIDDEN {details.revoked}``."""

from __future__ import annotations

import pytest

from s3db_ws_plugin.client import Forbidden

MEMBERS: dict[str, set[str]] = {}
BROKEN: set[str] = set()


def room_member(user, filter):
    room = (filter or {}).get("roomId")
    if room in BROKEN:
        raise RuntimeError("membership service is down")
    if room is None or user.id not in MEMBERS.get(room, set()):
        return False
    return {"roomId": room, **({"hidden": False} if user.id in MEMBERS.get("muted", ()) else {})}


@pytest.fixture(autouse=True)
def members():
    MEMBERS.clear()
    BROKEN.clear()
    MEMBERS.update({"r1": {"u1", "u2"}, "r2": {"u1", "u2"}})
    yield MEMBERS


@pytest.fixture
async def s3db_database(s3db_database):
    schema = {"roomId": "string|required", "text": "string|required", "hidden": "boolean|optional"}
    await s3db_database.create_resource("msgs", schema)
    await s3db_database.create_resource("other", schema)
    await s3db_database.create_resource("audit", schema)
    return s3db_database


@pytest.fixture
def s3db_plugin_config(s3db_jwt_secret):
    return {
        "auth": {"drivers": [{"driver": "jwt", "config": {"secret": s3db_jwt_secret}}]},
        "resources": {
            "msgs": {"guard": {"subscribe": room_member}},
            "other": True,
            "audit": {"auth": ["admin"]},
        },
    }


def open_subscriptions(plugin, user_id):
    return sorted(
        (s.resource, str(s.filter)) for c in plugin.connections if c.user.id == user_id
        for s in c.subscriptions
    )  # fmt: skip


async def test_a_removed_member_is_revoked_and_others_keep_streaming(
    s3db_connect, s3db_token, s3db_server, s3db_database, members
):
    u1 = await s3db_connect(token=s3db_token("u1"))
    u2 = await s3db_connect(token=s3db_token("u2"))
    u1_r1 = await u1.subscribe("msgs", {"roomId": "r1"})
    u1_r2 = await u1.subscribe("msgs", {"roomId": "r2"})
    u2_r1 = await u2.subscribe("msgs", {"roomId": "r1"})

    members["r1"].discard("u1")
    assert await s3db_server.recheck("msgs", where={"roomId": "r1"}) == 1
    with pytest.raises(Forbidden, match="revoked") as err:
        await u1_r1.next(timeout=2)
    assert err.value.details == {"resource": "msgs", "filter": {"roomId": "r1"}, "revoked": True}
    assert open_subscriptions(s3db_server, "u1") == [("msgs", "{'roomId': 'r2'}")]

    msgs = s3db_database.resources.msgs
    await msgs.insert({"roomId": "r1", "text": "for u2"})
    await msgs.insert({"roomId": "r2", "text": "for both"})
    assert (await u2_r1.next(timeout=2)).data["text"] == "for u2"
    assert (await u1_r2.next(timeout=2)).data["text"] == "for both"
    assert await u1.ping()  # revoking a subscription leaves the connection open


async def test_where_and_user_id_select_what_is_rechecked(
    s3db_connect, s3db_token, s3db_server, members
):
    u1 = await s3db_connect(token=s3db_token("u1"))
    u2 = await s3db_connect(token=s3db_token("u2"))
    for client in (u1, u2):
        for room in ("r1", "r2"):
            await client.subscribe("msgs", {"roomId": room})
    members["r1"].clear()
    members["r2"].clear()
    assert await s3db_server.recheck("msgs", where={"roomId": "r1"}, user_id="u2") == 1
    assert open_subscriptions(s3db_server, "u2") == [("msgs", "{'roomId': 'r2'}")]
    assert len(open_subscriptions(s3db_server, "u1")) == 2
    assert await s3db_server.recheck("other") == 0  # another resource: untouched
    assert await s3db_server.recheck() == 3
    assert open_subscriptions(s3db_server, "u1") == open_subscriptions(s3db_server, "u2") == []


async def test_a_guard_that_fails_revokes_and_a_narrower_filter_reindexes(
    s3db_connect, s3db_token, s3db_server, s3db_database, members
):
    u1 = await s3db_connect(token=s3db_token("u1"))
    r1 = await u1.subscribe("msgs", {"roomId": "r1"})
    r2 = await u1.subscribe("msgs", {"roomId": "r2"})
    BROKEN.add("r2")  # fail closed: a guard that cannot decide does not keep the stream
    members["muted"] = {"u1"}  # r1 now narrows to {"roomId": "r1", "hidden": False}
    assert await s3db_server.recheck("msgs") == 1
    with pytest.raises(Forbidden):
        await r2.next(timeout=2)
    assert open_subscriptions(s3db_server, "u1") == [("msgs", "{'roomId': 'r1', 'hidden': False}")]
    msgs = s3db_database.resources.msgs
    await msgs.insert({"roomId": "r1", "text": "hidden", "hidden": True})
    await msgs.insert({"roomId": "r1", "text": "shown", "hidden": False})
    assert (await r1.next(timeout=2)).data["text"] == "shown"


async def test_a_token_refresh_with_a_lower_role_revokes_what_it_no_longer_allows(
    s3db_connect, s3db_token, s3db_server, s3db_database
):
    client = await s3db_connect(token=s3db_token("u1", role="admin"))
    audit = await client.subscribe("audit")
    mine = await client.subscribe("msgs", {"roomId": "r1"})
    await client.auth(s3db_token("u1", role="user"))
    with pytest.raises(Forbidden, match="revoked"):
        await audit.next(timeout=2)
    assert open_subscriptions(s3db_server, "u1") == [("msgs", "{'roomId': 'r1'}")]
    await s3db_database.resources.audit.insert({"roomId": "r1", "text": "admins only"})
    await s3db_database.resources.msgs.insert({"roomId": "r1", "text": "still here"})
    assert (await mine.next(timeout=2)).data["text"] == "still here"
