"""The Python client's limits: a subscription that is not read falls behind by at most
``max_pending`` events and then fails loudly, and a slow-consumer close (4408) from the server is
survived by reconnecting and resubscribing."""

from __future__ import annotations

import asyncio

import pytest

from s3db_ws_plugin.client import Client, SlowConsumer

NOTE = {"title": "string|required", "roomId": "string|optional"}


@pytest.fixture
async def s3db_database(s3db_database):
    await s3db_database.create_resource("notes", NOTE)
    return s3db_database


@pytest.fixture
def s3db_plugin_config():
    return {"resources": {"notes": True}}


async def subscriptions_on_server(plugin) -> int:
    return sum(len(conn.subscriptions) for conn in plugin.connections)


async def test_an_unread_subscription_ends_with_slow_consumer_after_its_buffer(
    s3db_connect, s3db_database, s3db_server
):
    client = await s3db_connect(max_pending=100)
    slow = await client.subscribe("notes", max_pending=3)
    steady = await client.subscribe("notes", filter={"roomId": "r1"})
    notes = s3db_database.resources.notes
    written = [await notes.insert({"title": f"n{i}", "roomId": "r1"}) for i in range(5)]
    for record in written:  # the other subscription on the same socket misses nothing
        assert (await steady.next(timeout=2)).data["id"] == record["id"]

    # Nothing is dropped silently: the three buffered events, then the error, then the same error.
    assert [(await slow.next(timeout=2)).data["id"] for _ in range(3)] == [
        r["id"] for r in written[:3]
    ]
    with pytest.raises(SlowConsumer, match="more than 3 unread events"):
        await slow.next(timeout=2)
    with pytest.raises(SlowConsumer):
        await slow.next(timeout=2)
    assert slow.closed and not steady.closed
    # Its server-side subscription is released; the twin's stays.
    for _ in range(100):
        if await subscriptions_on_server(s3db_server) == 1:
            break
        await asyncio.sleep(0.02)
    assert await subscriptions_on_server(s3db_server) == 1
    late = await notes.insert({"title": "late", "roomId": "r1"})
    assert (await steady.next(timeout=2)).data["id"] == late["id"]


async def test_max_pending_must_be_positive(s3db_client):
    with pytest.raises(ValueError):
        Client("ws://127.0.0.1:1/", max_pending=0)
    with pytest.raises(ValueError):
        await s3db_client.subscribe("notes", max_pending=0)


async def test_a_4408_close_reconnects_and_resubscribes(s3db_connect, s3db_database, s3db_server):
    reconnected = asyncio.Event()
    client = await s3db_connect(on_reconnect=lambda c: reconnected.set())
    sub = await client.subscribe("notes", filter={"roomId": "r1"})
    first_id = client.client_id
    (conn,) = s3db_server.connections
    conn._overflow()  # what the server does when this socket's send queue overflows
    await asyncio.wait_for(reconnected.wait(), 5)
    assert client.reconnects == 1 and client.client_id != first_id
    assert client.close_code == 4408
    note = await s3db_database.resources.notes.insert({"title": "after", "roomId": "r1"})
    assert (await sub.next(timeout=2)).data["id"] == note["id"]


async def test_drain_returns_what_arrived_without_waiting(s3db_client, s3db_database):
    sub = await s3db_client.subscribe("notes", events=["insert", "delete"])
    assert sub.effective_events == ("insert", "delete") and sub.drain() == []
    notes = s3db_database.resources.notes
    first = await notes.insert({"title": "one"})
    await notes.update(first["id"], {"title": "uno"})  # not asked for
    await notes.insert({"title": "two"})
    await s3db_client.ping()  # the server answers after the events written before it
    assert [e.data["title"] for e in sub.drain()] == ["one", "two"]
    assert sub.drain() == []
    await sub.close()
    assert sub.drain() == []
    assert [e async for e in sub] == []  # the end is still there for the iterator
