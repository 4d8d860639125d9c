"""The order of checks on `get`, `update` and `delete`: the role list, then the read rule,
then the guard.

A record the read rule hides from the caller answers `NOT_FOUND` exactly like a missing id,
whatever the guard would say, and no guard is ever handed a record the caller may not read: the
guards here record every `ctx.record` they were handed, and the test looks at that list.
"""

from __future__ import annotations

from typing import Any

import pytest
from ws_helpers import JWT_AUTH, connect, make_token, serve

OPERATIONS = {
    "get": {},
    "update": {"data": {"title": "mine now"}},
    "delete": {},
}


async def notes(db):
    await db.create_resource(
        "notes",
        {"title": "string|required", "ownerId": "string|optional", "shared": "boolean|optional"},
    )


def recording_guards(handed: list[tuple[str, Any]], allow: Any) -> dict[str, Any]:
    """get/update/delete guards that note what they were handed, then decide by ``allow``."""

    def make(kind: str):
        def guard(user, ctx):
            handed.append((kind, ctx.record))
            return allow(user, ctx)

        return guard

    return {kind: make(kind) for kind in OPERATIONS}


def owner_or_shared(user, ctx):
    record = ctx.record
    return record is not None and (record.get("shared") or record["ownerId"] == user.id)


def always(user, ctx):
    return True


@pytest.mark.parametrize("allow", [owner_or_shared, always], ids=["refusing", "allowing"])
@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_a_hidden_record_is_not_found_and_never_reaches_a_guard(operation, allow):
    handed: list[tuple[str, Any]] = []
    resources = {
        "notes": {
            "read": {"$or": [{"ownerId": "$user.id"}, {"shared": True}]},
            "guard": recording_guards(handed, allow),
        }
    }
    async with serve(notes, resources=resources, auth=JWT_AUTH) as (db, plugin):
        secret = await db.resources.notes.insert({"title": "alice's diary", "ownerId": "alice"})
        shared = await db.resources.notes.insert(
            {"title": "team", "ownerId": "alice", "shared": True}
        )
        missing_id = "X" * len(secret["id"])
        async with connect(plugin.url, token=make_token("mallory")) as mallory:
            fields = OPERATIONS[operation]
            hidden = await mallory.call(operation, resource="notes", id=secret["id"], **fields)
            missing = await mallory.call(operation, resource="notes", id=missing_id, **fields)
            assert hidden["code"] == missing["code"] == "NOT_FOUND", (hidden, missing)
            assert hidden["message"].replace(secret["id"], "?") == missing["message"].replace(
                missing_id, "?"
            )
            assert set(hidden) == set(missing)
            assert all(record is None or record["id"] != secret["id"] for _, record in handed)
            # A record the caller may read still reaches the guard, which decides.
            visible = await mallory.call(operation, resource="notes", id=shared["id"], **fields)
            assert visible["type"] != "error", visible
            kind, record = handed[-1]
            assert kind == operation and record is not None and record["id"] == shared["id"]
        assert (await db.resources.notes.get(secret["id"]))["title"] == "alice's diary"


async def test_the_role_list_comes_before_the_read_rule():
    handed: list[tuple[str, Any]] = []
    resources = {
        "notes": {
            "auth": ["editor"],
            "read": {"ownerId": "$user.id"},
            "guard": recording_guards(handed, always),
        }
    }
    async with serve(notes, resources=resources, auth=JWT_AUTH) as (db, plugin):
        secret = await db.resources.notes.insert({"title": "diary", "ownerId": "alice"})
        async with connect(plugin.url, token=make_token("mallory", role="viewer")) as mallory:
            for operation, fields in OPERATIONS.items():
                for id in (secret["id"], "X" * len(secret["id"])):
                    answer = await mallory.call(operation, resource="notes", id=id, **fields)
                    assert answer["code"] == "FORBIDDEN", answer
        assert handed == []
