"""A claim in a read-rule template is a value, never a piece of the filter.

With ``read: {"tenantId": "$user.tenantId"}``, a validly signed token whose ``tenantId`` claim
is an object or a list shaped like an operator (``{"$ne": null}``, ``{"$exists": true}``...)
must see nothing of any tenant, through every read path: list, get, events and a snapshot. Only
an operator the template itself writes (``{"$in": "$user.groups"}``) applies to a claim.

The tokens are signed with the server's own secret: the claims are what an issuer (or a profile
field copied into a token) would put there, not a forgery.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from ws_helpers import JWT_AUTH, connect, make_token, serve

from s3db_ws_plugin.guards import ReadRule

OPERATOR_SHAPED = [
    {"$ne": None},
    {"$exists": True},
    {"$gt": ""},
    {"$in": ["t1", "t2"]},
    {"$nin": ["nobody"]},
    {"$ne": "x", "$exists": True},
    {"$eq": {"$ne": None}},
    [{"$ne": None}],
    ["t1", {"$gt": ""}],
    {"nested": {"$ne": None}},
]


async def docs(db):
    await db.create_resource(
        "docs",
        {
            "title": "string|required",
            "tenantId": "string|optional",
            "public": "boolean|default:false",
        },
    )


def served(read: Any):
    return serve(docs, resources={"docs": {"read": read}}, auth=JWT_AUTH)


async def two_tenants(db) -> dict[str, dict[str, Any]]:
    made = {}
    for title, tenant in [("t1 plans", "t1"), ("t2 plans", "t2")]:
        made[tenant] = await db.resources.docs.insert({"title": title, "tenantId": tenant})
    return made


async def everything_seen(db, plugin, token: str, made: dict[str, dict[str, Any]]) -> list[str]:
    """Every title the holder of ``token`` can read: list, get of each id, a snapshot, and the
    events of a subscription while both tenants write."""
    seen: list[str] = []
    async with connect(plugin.url, token=token) as client:
        page = await client.call("list", resource="docs")
        assert page["type"] == "data", page
        seen += [r["title"] for r in page["data"]]
        for record in made.values():
            answer = await client.call("get", resource="docs", id=record["id"])
            if answer["type"] == "data":
                seen.append(answer["data"]["title"])
            else:
                assert answer["code"] == "NOT_FOUND", answer
        snap = await client.call("subscribe", resource="docs", snapshot=True)
        assert snap["type"] == "subscribed", snap
        seen += [r["title"] for r in snap["data"]]
        await db.resources.docs.insert({"title": "t1 news", "tenantId": "t1"})
        await db.resources.docs.insert({"title": "t2 news", "tenantId": "t2"})
        seen += [f["data"]["title"] for f in await client.events()]
    return seen


@pytest.mark.parametrize("claim", OPERATOR_SHAPED, ids=json.dumps)
async def test_an_operator_shaped_claim_sees_nothing_of_any_tenant(claim):
    async with served({"tenantId": "$user.tenantId"}) as (db, plugin):
        made = await two_tenants(db)
        seen = await everything_seen(db, plugin, make_token("mallory", tenantId=claim), made)
        assert seen == []


async def test_a_plain_claim_still_sees_its_own_tenant_through_every_path():
    async with served({"tenantId": "$user.tenantId"}) as (db, plugin):
        made = await two_tenants(db)
        seen = await everything_seen(db, plugin, make_token("tina", tenantId="t2"), made)
        assert sorted(seen) == ["t2 news", "t2 plans", "t2 plans", "t2 plans"]


@pytest.mark.parametrize("claim", OPERATOR_SHAPED, ids=json.dumps)
async def test_a_claim_inside_or_is_a_value_too(claim):
    async with served({"$or": [{"public": True}, {"tenantId": "$user.tenantId"}]}) as (db, plugin):
        made = await two_tenants(db)
        await db.resources.docs.insert({"title": "open", "public": True})
        seen = await everything_seen(db, plugin, make_token("mallory", tenantId=claim), made)
        assert seen == ["open", "open"]  # from the list and the snapshot


async def test_an_operator_the_template_writes_applies_to_the_claim():
    async with served({"tenantId": {"$in": "$user.tenants"}}) as (db, plugin):
        made = await two_tenants(db)
        seen = await everything_seen(db, plugin, make_token("tina", tenants=["t1"]), made)
        assert sorted(seen) == ["t1 news", "t1 plans", "t1 plans", "t1 plans"]
        for claim in ([{"$ne": None}], [{"$exists": True}], {"$ne": None}, "t1"):
            token = make_token("mallory", tenants=claim)
            assert await everything_seen(db, plugin, token, made) == []


class _User(dict):
    @property
    def id(self) -> str:
        return self["id"]


@pytest.mark.parametrize(
    "template",
    [
        {"$or": ["$user.filter"]},
        {"$and": "$user.filters"},
        {"$or": [{"public": True}, "$user.filter"]},
    ],
)
def test_a_claim_cannot_stand_for_a_filter(template):
    with pytest.raises(ValueError, match="value"):
        ReadRule("docs", template)


def test_a_literal_object_keeps_its_claims_as_values():
    rule = ReadRule("docs", {"owner": {"id": "$user.id", "kind": "user"}})
    assert rule.bind(_User(id="al"))({"owner": {"id": "al", "kind": "user"}})
    assert not rule.bind(_User(id="al"))({"owner": {"id": "bo", "kind": "user"}})
    sneaky = rule.bind(_User(id={"$ne": None}))
    assert not sneaky({"owner": {"id": "al", "kind": "user"}})


def test_a_very_deep_claim_is_refused_without_recursing():
    deep: Any = "t1"
    for _ in range(100_000):
        deep = {"a": deep}
    rule = ReadRule("docs", {"tenantId": "$user.tenantId"})
    assert not rule.bind(_User(id="x", tenantId=deep))({"tenantId": "t1"})
