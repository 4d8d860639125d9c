"""Redefining a resource: compatible changes are accepted and saved; a change its stored
records do not fit raises IncompatibleSchemaError, unless the resource is empty or the caller
passes migrate=True."""

from __future__ import annotations

import orjson
import pytest

from s3db_core import Database, IncompatibleSchemaError
from s3db_core.compat import incompatible_changes

NOTES = {"title": "string|required", "votes": "number|optional", "roomId": "string|optional"}


@pytest.fixture
async def db(tmp_path):
    async with Database(f"file://{tmp_path}/data") as db:
        notes = await db.create_resource("notes", NOTES, timestamps=True)
        await notes.insert({"title": "hi", "votes": 1})
        yield db


async def saved_attributes(db: Database) -> dict:
    return orjson.loads((await db.storage.get("s3db.json")).body)["resources"]["notes"]["attributes"]


@pytest.mark.parametrize(
    ("attributes", "options", "change"),
    [
        ({**NOTES, "votes": "string|optional"}, {}, "field 'votes' changes type from number to string"),
        ({**NOTES, "author": "string|required"}, {}, "new field 'author' is required and has no default"),
        ({**NOTES, "votes": "number|required"}, {}, "field 'votes' becomes required and has no default"),
        ({"title": "string|required", "roomId": "string"}, {}, "field 'votes' is removed"),
        (NOTES, {"partitions": {"byRoom": {"fields": {"roomId": "string"}}}}, "partition 'byRoom' is added"),
        (NOTES, {"timestamps": False}, "timestamps are turned off"),
    ],
)
async def test_incompatible_redefinition_is_refused(db, attributes, options, change):
    options = {"timestamps": True, **options}
    with pytest.raises(IncompatibleSchemaError) as caught:
        await db.create_resource("notes", attributes, **options)
    assert caught.value.changes == [change]
    assert change in str(caught.value) and "migrate=True" in str(caught.value)
    # Nothing changed: the old definition still serves and is still the saved one.
    assert await saved_attributes(db) == NOTES
    assert (await db.resources.notes.insert({"title": "still", "votes": 2}))["votes"] == 2


async def test_compatible_redefinition_is_accepted_and_saved(db):
    attributes = {**NOTES, "tags": "array|items:string|optional", "status": "string|required|default:open"}
    notes = await db.create_resource("notes", attributes, timestamps=True)
    assert await saved_attributes(db) == attributes
    old = (await notes.list()).items[0]
    assert (await notes.update(old["id"], {"votes": 5}))["votes"] == 5


async def test_the_check_holds_across_a_restart(db, tmp_path):
    async with Database(f"file://{tmp_path}/data") as reopened:
        with pytest.raises(IncompatibleSchemaError):
            await reopened.create_resource("notes", {**NOTES, "votes": "boolean"}, timestamps=True)


async def test_an_empty_resource_may_change_freely(db):
    other = await db.create_resource("drafts", {"body": "string"})
    await db.create_resource("drafts", {"body": "number|required"})
    assert await other.count() == 0


async def test_migrate_accepts_the_new_definition(db):
    notes = await db.create_resource(
        "notes", {**NOTES, "votes": "string|optional"}, timestamps=True, migrate=True
    )
    assert (await saved_attributes(db))["votes"] == "string|optional"
    old = (await notes.list()).items[0]
    fixed = await notes.update(old["id"], {"votes": str(old["votes"])})
    assert fixed["votes"] == "1"


def test_nested_and_array_changes_are_found() -> None:
    old = {"attributes": {"address": {"city": "string", "zip": "number"}, "tags": "array|items:string"}}
    new = {"attributes": {"address": {"city": "string", "zip": "string"}, "tags": "array|items:number"}}
    assert incompatible_changes(old, new) == [
        "field 'address.zip' changes type from number to string",
        "array field 'tags' changes its items from string to number",
    ]
