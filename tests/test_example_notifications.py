"""The live notifications example end to end: every user receives their own, and only theirs.

The server sends notifications with the seed's ``send_notification`` helper; Alice listens with
the Python client, Bob with a raw socket that records every frame, so the test also proves that
nothing else reaches him, however he widens his filters.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import pytest
import pytest_asyncio
from example_process import running_example
from ws_helpers import connect

from examples.common import Options, make_token
from examples.notifications.app import (
    SEED_USAGE,
    create_app,
    send_notification,
    send_seed_notification,
)
from s3db_core import Change, hookimpl
from s3db_ws_plugin.client import Client, Forbidden

SECRET = "notifications-test-secret-with-enough-bytes"
EVENT_TIMEOUT = 5.0


@pytest_asyncio.fixture
async def app():
    options = Options(port=0, host="127.0.0.1", db=f"memory://notif-{uuid.uuid4().hex}", jwt_secret=SECRET)
    db, plugin, _jobs = await create_app(options)
    try:
        yield db, plugin
    finally:
        await db.disconnect()


def token(name):
    return make_token(SECRET, name, name=name.title())


async def ok(client, type, **fields):
    reply = await client.call(type, **fields)
    assert reply["type"] != "error", reply
    return reply


async def refused(client, type, **fields):
    reply = await client.call(type, **fields)
    assert (reply["type"], reply.get("code")) == ("error", "FORBIDDEN"), reply
    return reply


async def test_users_only_receive_their_own_notifications(app):
    db, plugin = app
    async with Client(plugin.url, token=token("alice")) as alice, connect(plugin.url, token=token("bob")) as bob:
        alice_feed = await alice.subscribe("notifications")
        assert alice_feed.effective_filter == {"userId": "alice"}
        # Bob tries to listen to Alice's notifications: the guard pins the filter to him.
        widened = await ok(bob, "subscribe", resource="notifications", filter={"userId": "alice"})
        assert widened["filter"] == {"userId": "bob"}
        narrowed = await ok(bob, "subscribe", resource="notifications", filter={"type": "message"})
        assert narrowed["filter"] == {"type": "message", "userId": "bob"}

        first = await send_notification(db, "alice", SEED_USAGE[1])
        for_bob = await send_notification(db, "bob", {"type": "message", "title": "Hi Bob"})
        second = await send_notification(db, "alice", {"type": "mention", "title": "You were mentioned"})

        event = await alice_feed.next(EVENT_TIMEOUT)
        assert (event.event, event.data["id"]) == ("insert", first["id"])
        assert {k: event.data[k] for k in ("type", "title", "body", "data", "read")} == {
            "type": "message",
            "title": "New message",
            "body": "John sent you a message",
            "data": {"messageId": "msg-456"},
            "read": False,
        }
        assert (await alice_feed.next(EVENT_TIMEOUT)).data["id"] == second["id"]
        # Bob got exactly his own, once, although two of his subscriptions match it.
        assert [(f["event"], f["data"]["id"]) for f in await bob.sync()] == [("insert", for_bob["id"])]

        # Lists are pinned the same way, whatever filter the client sends.
        for filter in (None, {"userId": "alice"}, {"userId": {"$in": ["alice", "bob"]}}):
            listed = await ok(bob, "list", resource="notifications", filter=filter)
            assert [n["id"] for n in listed["data"]] == [for_bob["id"]]
        mine = await alice.list("notifications")
        assert [n["id"] for n in mine.items] == [first["id"], second["id"]]

        # Another user's notification cannot be read, marked, reassigned or deleted.
        await refused(bob, "get", resource="notifications", id=first["id"])
        await refused(bob, "update", resource="notifications", id=first["id"], data={"read": True})
        await refused(bob, "update", resource="notifications", id=first["id"], data={"userId": "bob"})
        await refused(bob, "delete", resource="notifications", id=first["id"])
        assert (await db.resources.notifications.get(first["id"]))["read"] is False
        assert await bob.sync() == []


async def test_users_mark_their_own_as_read(app):
    db, plugin = app
    async with connect(plugin.url, token=token("alice")) as alice, connect(plugin.url, token=token("bob")) as bob:
        for client in (alice, bob):
            await ok(client, "subscribe", resource="notifications")
        note = await send_notification(db, "alice", {"type": "system", "title": "Welcome"})
        assert "body" not in note and "data" not in note

        read = await ok(alice, "update", resource="notifications", id=note["id"], data={"read": True})
        assert read["data"]["read"] is True
        # Only "read" changes: a notification cannot be handed to someone else or rewritten.
        for patch in ({"userId": "bob"}, {"read": False, "title": "Edited"}):
            reply = await refused(alice, "update", resource="notifications", id=note["id"], data=patch)
            assert "read" in reply["message"]
        assert [(f["event"], f["data"]["read"]) for f in await alice.sync()] == [("insert", False), ("update", True)]
        assert await bob.sync() == []

        got = await ok(alice, "get", resource="notifications", id=note["id"])
        assert got["data"]["userId"] == "alice"
        await ok(alice, "delete", resource="notifications", id=note["id"])
        assert await db.resources.notifications.get_or_none(note["id"]) is None


async def test_anyone_can_send_a_notification_to_anyone(app):
    db, plugin = app
    # The seed's "Anyone can create (system creates them)": a user notifies another user.
    async with Client(plugin.url, token=token("alice")) as alice, Client(plugin.url, token=token("bob")) as bob:
        feed = await alice.subscribe("notifications")
        sent = await bob.insert("notifications", {"userId": "alice", "type": "message", "title": "Lunch?"})
        event = await feed.next(EVENT_TIMEOUT)
        assert (event.data["id"], event.data["title"]) == (sent["id"], "Lunch?")
        # ...but once sent, it is Alice's alone.
        with pytest.raises(Forbidden):
            await bob.get("notifications", sent["id"])
        await send_seed_notification(db)
        assert [n["userId"] for n in (await bob.list("notifications")).items] == []


async def test_a_user_notification_names_its_sender_and_system_ones_come_from_the_server(app):
    db, plugin = app
    async with Client(plugin.url, token=token("alice")) as alice, Client(plugin.url, token=token("mallory")) as mallory:
        feed = await alice.subscribe("notifications")
        # Mallory cannot pose as the system, in any spelling or by naming another sender.
        for kind in ("system", "System", " system"):
            with pytest.raises(Forbidden):
                await mallory.insert("notifications", {"userId": "alice", "type": kind, "title": "Reset your password"})
        forged = {"userId": "alice", "type": "message", "title": "hi", "senderId": "bob", "senderName": "Bob"}
        sent = await mallory.insert("notifications", forged)
        assert (sent["senderId"], sent["senderName"]) == ("mallory", "Mallory")
        event = await feed.next(EVENT_TIMEOUT)
        assert (event.data["id"], event.data["senderId"], event.data["senderName"]) == (sent["id"], "mallory", "Mallory")
        # The server's own notifications may be "system"; they carry no user as sender.
        system = await send_notification(db, "alice", {"type": "system", "title": "Maintenance at 2am"})
        event = await feed.next(EVENT_TIMEOUT)
        assert (event.data["id"], event.data["type"]) == (system["id"], "system")
        assert "senderId" not in event.data
        # A recipient marking a notification read cannot rewrite who sent it.
        with pytest.raises(Forbidden):
            await alice.update("notifications", sent["id"], {"senderId": "bob"})
        assert (await alice.get("notifications", sent["id"]))["senderId"] == "mallory"


async def test_python_m_examples_notifications_runs():
    async with running_example("notifications", SECRET, ready="Demo:") as (url, lines):
        assert any("user-123" in line for line in lines)
        async with Client(url, token=token("user-123")) as user, Client(url, token=token("john")) as john:
            feed = await user.subscribe("notifications")
            await john.insert("notifications", {"userId": "user-123", "type": "message", "title": "Hi"})
            assert (await feed.next(EVENT_TIMEOUT)).data["title"] == "Hi"


README = Path(__file__).resolve().parents[1] / "examples" / "notifications" / "README.md"


def readme_client_snippet() -> str:
    """The client loop of the README's Python block (which starts with a send_notification)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    block = next(b for b in blocks if 'client.subscribe("notifications")' in b)
    return block[block.index("async with Client(") :]


async def test_the_readme_client_marks_one_notification_read_once(app):
    """Marking read fires an update event; the README's loop must not mark it again (and again)."""
    db, plugin = app
    updates = []

    class CountUpdates:
        @hookimpl
        def s3db_change(self, change: Change) -> None:
            if change.resource == "notifications" and change.event == "update":
                updates.append(change.record["id"])

    await db.use_plugin(CountUpdates())
    printed: list[str] = []
    code = "async def snippet():\n" + "".join(f"    {line}\n" for line in readme_client_snippet().splitlines())
    scope = {"db": db, "url": plugin.url, "token": token("user-123"), "Client": Client,
             "send_notification": send_notification, "print": printed.append}
    exec(code, scope)
    task = asyncio.create_task(scope["snippet"]())
    try:
        async def until(check) -> None:
            async with asyncio.timeout(EVENT_TIMEOUT):
                while not await check():
                    await asyncio.sleep(0.01)

        async def all_read() -> bool:
            found = await db.resources.notifications.query({"userId": "user-123"})
            return bool(found) and all(n["read"] for n in found)

        await until(lambda: asyncio.sleep(0, len(plugin.registry) == 1))  # subscribed
        await send_notification(db, *SEED_USAGE)
        await until(all_read)
        # A second notification is a barrier: the loop has handled every event before it.
        await send_notification(db, "user-123", {"type": "system", "title": "barrier"})
        await until(lambda: asyncio.sleep(0, "barrier" in printed))
        await until(all_read)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert printed == ["New message", "barrier"]
    assert len(updates) == 2
