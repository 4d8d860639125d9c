"""A resource's default ``list`` order: ``{"order": "desc"}`` serves clients (like the seed's
ChatRoom) that ask for history without an order and expect the newest records first."""

from __future__ import annotations

import pytest

from s3db_ws_plugin import WebSocketPlugin


@pytest.fixture
async def s3db_database(s3db_database):
    for name in ("messages", "notes"):
        await s3db_database.create_resource(name, {"n": "number|required"})
    return s3db_database


@pytest.fixture
def s3db_plugin_config():
    return {"resources": {"messages": {"order": "desc"}, "notes": True}}


async def test_a_list_without_order_takes_the_resource_default(s3db_client, s3db_database):
    for n in range(5):
        await s3db_database.resources.messages.insert({"n": n})
        await s3db_database.resources.notes.insert({"n": n})
    newest = await s3db_client.list("messages", limit=3)
    assert [m["n"] for m in newest.items] == [4, 3, 2]
    rest = await s3db_client.list("messages", limit=3, cursor=newest.cursor)
    assert [m["n"] for m in rest.items] == [1, 0] and rest.cursor is None
    assert [m["n"] for m in (await s3db_client.list("messages", order="asc")).items] == [
        0, 1, 2, 3, 4
    ]  # fmt: skip
    assert [m["n"] for m in (await s3db_client.list("notes", limit=2)).items] == [0, 1]


def test_an_unknown_order_is_a_configuration_error():
    with pytest.raises(ValueError, match="'order' must be 'asc' or 'desc'"):
        WebSocketPlugin(resources={"messages": {"order": "newest"}})
