"""The chat example end to end: real sockets, the seed's story, and what each user must not see.

Alice, Bob and Carol use ``examples.chat`` through the Python client, exactly as the seed's
React client does through the browser's WebSocket (see test_seed_clients.py for that one).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import AsyncExitStack

import aiohttp
import pytest
import pytest_asyncio
from example_process import running_example
from ws_helpers import connect

import examples.common
from examples.chat.app import create_app, delete_expired_typing
from examples.common import DEV_SECRET, Options, make_token, parse_options
from s3db_ws_plugin.client import Client, Forbidden, NotFound, ValidationFailed

SECRET = "chat-test-secret-with-enough-bytes"
TYPING_TTL = 0.4
EVENT_TIMEOUT = 5.0


class Chat:
    """The running example and a way to sign its users in."""

    def __init__(self, db, plugin, token, stack: AsyncExitStack) -> None:
        self.db = db
        self.plugin = plugin
        self.token = token
        self.stack = stack

    async def user(self, name: str) -> Client:
        """A connected client for ``name`` (a JWT with ``sub`` and ``name``, as the seed expects)."""
        client = Client(self.plugin.url, token=self.token(name, name=name.title()))
        return await self.stack.enter_async_context(client)


@pytest.fixture
def s3db_jwt_secret() -> str:
    return SECRET  # what the project's s3db_token fixture signs with


@pytest_asyncio.fixture
async def chat(s3db_token):
    options = Options(port=0, host="127.0.0.1", db=f"memory://chat-{uuid.uuid4().hex}", jwt_secret=SECRET)
    db, plugin, jobs = await create_app(options, typing_ttl=TYPING_TTL, cleanup_every=0.1)
    tasks = [asyncio.create_task(job()) for job in jobs]
    try:
        async with AsyncExitStack() as stack:
            yield Chat(db, plugin, s3db_token, stack)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.disconnect()


async def next_event(sub):
    return await sub.next(timeout=EVENT_TIMEOUT)


async def test_a_public_room_conversation_with_history(chat):
    alice, bob = await chat.user("alice"), await chat.user("bob")

    # The create guard decides who created the room and who is in it, whatever the client says.
    room = await alice.insert(
        "chat_rooms", {"name": "general", "createdBy": "mallory", "members": ["mallory"]}
    )
    assert room["createdBy"] == "alice"
    assert room["members"] == ["alice", "mallory"]
    assert room["isPrivate"] is False
    listed = await bob.list("chat_rooms")
    assert [r["id"] for r in listed.items] == [room["id"]]

    alice_msgs = await alice.subscribe("chat_messages", {"roomId": room["id"]})
    bob_msgs = await bob.subscribe("chat_messages", {"roomId": room["id"]})

    # The sender is who the token says: a forged userId/username is overwritten by the guard.
    sent = await bob.insert(
        "chat_messages",
        {"roomId": room["id"], "content": "hi all", "userId": "alice", "username": "Alice"},
    )
    assert (sent["userId"], sent["username"], sent["type"]) == ("bob", "Bob", "text")
    for sub in (alice_msgs, bob_msgs):
        event = await next_event(sub)
        assert (event.event, event.data["id"]) == ("insert", sent["id"])
        assert (event.data["userId"], event.data["username"]) == ("bob", "Bob")

    await alice.insert("chat_messages", {"roomId": room["id"], "content": "hello bob"})
    assert (await next_event(bob_msgs)).data["content"] == "hello bob"

    # Carol arrives later and loads the history the way the seed does (list, limit 50, no
    # order): messages come newest first, which the seed's ChatRoom reverses.
    carol = await chat.user("carol")
    history = await carol.list("chat_messages", {"roomId": room["id"]}, limit=50)
    assert [(m["username"], m["content"]) for m in history.items] == [
        ("Alice", "hello bob"),
        ("Bob", "hi all"),
    ]
    oldest_first = await carol.list("chat_messages", {"roomId": room["id"]}, limit=1, order="asc")
    assert [m["content"] for m in oldest_first.items] == ["hi all"]

    # Only the seed's message kinds come from clients; "system" messages are the server's.
    with pytest.raises(Forbidden):
        await carol.insert("chat_messages", {"roomId": room["id"], "content": "x", "type": "system"})


async def test_a_private_room_refuses_outsiders_everywhere(chat):
    alice, bob, carol = await chat.user("alice"), await chat.user("bob"), await chat.user("carol")
    public = await alice.insert("chat_rooms", {"name": "lobby"})
    carol_rooms = await carol.subscribe("chat_rooms")
    secret = await alice.insert(
        "chat_rooms", {"name": "secret", "isPrivate": True, "members": ["bob"]}
    )
    assert secret["members"] == ["alice", "bob"]
    room_id = secret["id"]
    carol_public = await carol.subscribe("chat_messages", {"roomId": public["id"]})

    # Members work normally.
    bob_msgs = await bob.subscribe("chat_messages", {"roomId": room_id})
    bob_typing = await bob.subscribe("typing_indicators", {"roomId": room_id})
    message = await alice.insert("chat_messages", {"roomId": room_id, "content": "for bob only"})
    assert (await next_event(bob_msgs)).data["content"] == "for bob only"
    await alice.insert("typing_indicators", {"roomId": room_id})
    assert (await next_event(bob_typing)).data["userId"] == "alice"
    assert [m["id"] for m in (await bob.list("chat_messages", {"roomId": room_id})).items] == [
        message["id"]
    ]
    assert (await bob.get("chat_rooms", room_id))["name"] == "secret"

    # Carol is refused for subscribe, list, get and insert, on messages and typing indicators.
    for resource in ("chat_messages", "typing_indicators"):
        with pytest.raises(Forbidden):
            await carol.subscribe(resource, {"roomId": room_id})
        with pytest.raises(Forbidden):
            await carol.list(resource, {"roomId": room_id})
        with pytest.raises(Forbidden):
            await carol.insert(resource, {"roomId": room_id, "content": "let me in"})
    # A private room and its messages look missing to her (see the parity test below).
    with pytest.raises(NotFound):
        await carol.get("chat_messages", message["id"])
    with pytest.raises(NotFound):
        await carol.get("chat_rooms", room_id)
    # ... also when she tries to get around the room check.
    for sneaky in ({}, {"roomId": {"$in": [room_id, public["id"]]}}, {"roomId": {"$ne": "x"}}):
        with pytest.raises(Forbidden):
            await carol.subscribe("chat_messages", sneaky)
        with pytest.raises(Forbidden):
            await carol.list("chat_messages", sneaky)
    with pytest.raises(NotFound):
        await carol.update("chat_rooms", room_id, {"members": ["alice", "bob", "carol"]})
    with pytest.raises(NotFound):
        await carol.update("chat_messages", message["id"], {"content": "defaced"})

    # The room list shows her the public room only, even when she asks for private ones.
    assert [r["id"] for r in (await carol.list("chat_rooms")).items] == [public["id"]]
    asking = await carol.list("chat_rooms", {"isPrivate": True})
    assert [r["id"] for r in asking.items] == [public["id"]]
    assert (await carol.list("chat_rooms", {"members[]": "bob"})).items == []
    assert [r["id"] for r in (await bob.list("chat_rooms", {"members[]": "bob"})).items] == [room_id]

    # Nothing of the private room reaches her subscriptions: her next events are public ones.
    await alice.update("chat_rooms", room_id, {"description": "still secret"})
    await bob.insert("chat_messages", {"roomId": room_id, "content": "psst"})
    await alice.update("chat_rooms", public["id"], {"description": "open to all"})
    await alice.insert("chat_messages", {"roomId": public["id"], "content": "public news"})
    room_event = await next_event(carol_rooms)
    assert (room_event.data["id"], room_event.data["description"]) == (public["id"], "open to all")
    assert (await next_event(carol_public)).data["content"] == "public news"

    # A missing room is refused for messages, and not found for rooms.
    with pytest.raises(Forbidden):
        await carol.subscribe("chat_messages", {"roomId": "no-such-room"})
    with pytest.raises(NotFound):
        await carol.get("chat_rooms", "no-such-room")


async def test_the_creator_invites_members_and_authors_own_their_messages(chat):
    alice, bob, carol = await chat.user("alice"), await chat.user("bob"), await chat.user("carol")
    room = await alice.insert("chat_rooms", {"name": "team", "isPrivate": True})
    with pytest.raises(Forbidden):
        await bob.list("chat_messages", {"roomId": room["id"]})
    # Only the creator manages the room; the creator can neither be replaced nor removed. (To
    # Bob, not a member yet, the private room does not even exist.)
    with pytest.raises(NotFound):
        await bob.update("chat_rooms", room["id"], {"members": ["bob"]})
    updated = await alice.update(
        "chat_rooms", room["id"], {"members": ["bob"], "createdBy": "bob"}
    )
    assert (updated["members"], updated["createdBy"]) == (["alice", "bob"], "alice")
    with pytest.raises(Forbidden):
        await alice.update("chat_rooms", room["id"], {"members": None})
    odd = await carol.insert("chat_rooms", {"name": "odd", "members": None})
    assert odd["members"] == ["carol"]
    message = await bob.insert("chat_messages", {"roomId": room["id"], "content": "thanks!"})

    # Authors edit and delete their own messages only, and cannot move them or change authorship.
    with pytest.raises(Forbidden):
        await alice.update("chat_messages", message["id"], {"content": "edited by alice"})
    with pytest.raises(Forbidden):
        await alice.delete("chat_messages", message["id"])
    edited = await bob.update(
        "chat_messages", message["id"], {"content": "thanks a lot!", "userId": "alice", "roomId": "x"}
    )
    assert (edited["content"], edited["userId"], edited["roomId"]) == ("thanks a lot!", "bob", room["id"])
    with pytest.raises(NotFound):  # Carol is no member: the private room is not there for her
        await carol.delete("chat_rooms", room["id"])
    with pytest.raises(Forbidden):  # Bob is a member, not its creator
        await bob.delete("chat_rooms", room["id"])
    await bob.delete("chat_messages", message["id"])
    assert await chat.db.resources.chat_messages.get_or_none(message["id"]) is None


async def test_a_member_removed_from_a_private_room_stops_receiving_it(chat):
    alice, bob, carol = await chat.user("alice"), await chat.user("bob"), await chat.user("carol")
    room = await alice.insert("chat_rooms", {"name": "team", "isPrivate": True, "members": ["bob", "carol"]})
    bob_msgs = await bob.subscribe("chat_messages", {"roomId": room["id"]})
    bob_typing = await bob.subscribe("typing_indicators", {"roomId": room["id"]})
    carol_msgs = await carol.subscribe("chat_messages", {"roomId": room["id"]})
    await alice.insert("chat_messages", {"roomId": room["id"], "content": "welcome"})
    assert (await next_event(bob_msgs)).data["content"] == "welcome"
    assert (await next_event(carol_msgs)).data["content"] == "welcome"

    # Alice removes Bob: his open subscriptions to the room end with FORBIDDEN (revoked)...
    await alice.update("chat_rooms", room["id"], {"members": ["carol"]})
    with pytest.raises(Forbidden, match="revoked") as revoked:
        await next_event(bob_msgs)
    assert revoked.value.details == {"resource": "chat_messages", "filter": {"roomId": room["id"]}, "revoked": True}
    with pytest.raises(Forbidden, match="revoked"):
        await next_event(bob_typing)
    # ...so what is said next reaches Carol and not Bob, who cannot subscribe again either.
    await alice.insert("chat_messages", {"roomId": room["id"], "content": "just us now"})
    assert (await next_event(carol_msgs)).data["content"] == "just us now"
    assert sum(len(c.subscriptions) for c in chat.plugin.connections if c.user.id == "bob") == 0
    with pytest.raises(Forbidden):
        await bob.subscribe("chat_messages", {"roomId": room["id"]})
    assert await bob.ping()  # the connection itself stays open

    # Deleting the room revokes Carol's subscription the same way.
    await alice.delete("chat_rooms", room["id"])
    with pytest.raises(Forbidden, match="revoked"):
        await next_event(carol_msgs)


async def test_a_private_room_answers_like_a_missing_one_to_outsiders(chat):
    # get/update/delete of a private room (or of its messages) must not tell an outsider that
    # it exists: the same NOT_FOUND as an id that names nothing.
    alice, bob, carol = await chat.user("alice"), await chat.user("bob"), await chat.user("carol")
    room = await alice.insert("chat_rooms", {"name": "secret", "isPrivate": True, "members": ["bob"]})
    message = await bob.insert("chat_messages", {"roomId": room["id"], "content": "hush"})
    typing = await bob.insert("typing_indicators", {"roomId": room["id"]})
    missing = "AAAAAAAAAAAAAAAAAAAAAA"
    for resource, real in (
        ("chat_rooms", room["id"]),
        ("chat_messages", message["id"]),
        ("typing_indicators", typing["id"]),
    ):
        for id in (real, missing):
            for attempt in (
                carol.get(resource, id),
                carol.update(resource, id, {"name": "x", "content": "x"}),
                carol.delete(resource, id),
            ):
                with pytest.raises(NotFound) as err:
                    await attempt
                assert err.value.code == "NOT_FOUND"
    # A member who is not the creator sees the room, so a refusal there is FORBIDDEN.
    with pytest.raises(Forbidden):
        await bob.delete("chat_rooms", room["id"])
    assert (await alice.get("chat_rooms", room["id"]))["name"] == "secret"


async def test_deleting_a_room_deletes_its_history(chat):
    alice, bob = await chat.user("alice"), await chat.user("bob")
    room = await alice.insert("chat_rooms", {"name": "team", "isPrivate": True, "members": ["bob"]})
    await bob.insert("chat_messages", {"roomId": room["id"], "content": "before"})
    await alice.update("chat_rooms", room["id"], {"members": []})  # Bob is removed
    await alice.insert("chat_messages", {"roomId": room["id"], "content": "after bob left"})
    await alice.insert("typing_indicators", {"roomId": room["id"]})
    await alice.delete("chat_rooms", room["id"])
    # The room's messages and typing indicators go with it: nothing is left to inherit.
    for name in ("chat_messages", "typing_indicators"):
        assert await chat.db.resources[name].query({"roomId": room["id"]}) == []
    # Even a room the server itself re-creates under that id starts with an empty history.
    reborn = await chat.db.resources.chat_rooms.insert(
        {"id": room["id"], "name": "team", "isPrivate": True, "members": ["bob"], "createdBy": "bob"}
    )
    assert (await bob.list("chat_messages", {"roomId": reborn["id"]})).items == []


async def test_a_room_made_private_leaves_outsiders_with_its_id_only(chat):
    alice, carol = await chat.user("alice"), await chat.user("carol")
    room = await alice.insert("chat_rooms", {"name": "general"})
    async with connect(chat.plugin.url, token=chat.token("carol", name="Carol")) as raw:
        await raw.call("subscribe", resource="chat_rooms")
        carol_rooms = await carol.subscribe("chat_rooms")
        await alice.update(
            "chat_rooms", room["id"], {"name": "hideout", "isPrivate": True, "members": ["dave"]}
        )
        frames = await raw.sync()
        assert [(f["event"], f["data"]) for f in frames] == [("leave", {"id": room["id"]})]
        assert "hideout" not in json.dumps(frames) and "dave" not in json.dumps(frames)
        assert (await next_event(carol_rooms)).event == "leave"
        # Nothing of it afterwards, and a get finds nothing.
        await alice.update("chat_rooms", room["id"], {"description": "plans"})
        assert await raw.sync() == []
        with pytest.raises(NotFound):
            await carol.get("chat_rooms", room["id"])
        # Its members still see it change.
        assert (await alice.get("chat_rooms", room["id"]))["description"] == "plans"


async def test_a_member_removed_from_a_private_room_gets_leave_not_its_new_state(chat):
    alice = await chat.user("alice")
    room = await alice.insert("chat_rooms", {"name": "team", "isPrivate": True, "members": ["bob"]})
    async with connect(chat.plugin.url, token=chat.token("bob", name="Bob")) as bob:
        # Bob follows the private rooms he belongs to (the room list's own form).
        await bob.call("subscribe", resource="chat_rooms", filter={"members[]": "bob"})
        await alice.update("chat_rooms", room["id"], {"members": ["carol"], "name": "no bob here"})
        frames = await bob.sync()
        assert [(f["event"], f["data"]) for f in frames] == [("leave", {"id": room["id"]})]
        assert "no bob here" not in json.dumps(frames) and "carol" not in json.dumps(frames)


async def test_clients_cannot_choose_ids(chat):
    # A removed member cannot re-create a deleted room under its old id (nor squat or probe
    # ids): a client-chosen id is refused whatever it is, taken or free.
    alice, bob = await chat.user("alice"), await chat.user("bob")
    room = await alice.insert("chat_rooms", {"name": "team", "isPrivate": True, "members": ["bob"]})
    await alice.delete("chat_rooms", room["id"])
    for id in (room["id"], "AAAAAAAAAAAAAAAAAAAAAA"):
        for resource, data in (
            ("chat_rooms", {"id": id, "name": "team"}),
            ("chat_messages", {"id": id, "roomId": room["id"], "content": "x"}),
        ):
            with pytest.raises(ValidationFailed):
                await bob.insert(resource, data)
    assert await chat.db.resources.chat_rooms.get_or_none(room["id"]) is None


async def test_typing_indicators_appear_and_are_cleaned_up(chat):
    alice, bob = await chat.user("alice"), await chat.user("bob")
    room = await alice.insert("chat_rooms", {"name": "general"})
    bob_typing = await bob.subscribe("typing_indicators", {"roomId": room["id"]})

    before = int(time.time() * 1000)
    typing = await alice.insert(
        "typing_indicators",
        {"roomId": room["id"], "userId": "bob", "username": "Bob", "expiresAt": 10**15},
    )
    # The guard sets who is typing and the TTL; the client's values are ignored.
    assert (typing["userId"], typing["username"]) == ("alice", "Alice")
    assert before + TYPING_TTL * 1000 <= typing["expiresAt"] <= time.time() * 1000 + TYPING_TTL * 1000
    inserted = await next_event(bob_typing)
    assert (inserted.event, inserted.data["id"], inserted.data["username"]) == ("insert", typing["id"], "Alice")

    # The background cleanup (query expiresAt $lt now, delete each) removes it once expired.
    deleted = await next_event(bob_typing)
    assert (deleted.event, deleted.data["id"]) == ("delete", typing["id"])
    assert time.time() * 1000 >= typing["expiresAt"]
    assert await chat.db.resources.typing_indicators.get_or_none(typing["id"]) is None

    # Users may clear their own indicator (e.g. on send), not somebody else's.
    again = await chat.db.resources.typing_indicators.insert(
        {"roomId": room["id"], "userId": "alice", "username": "Alice", "expiresAt": 10**15}
    )
    assert (await next_event(bob_typing)).data["id"] == again["id"]
    with pytest.raises(Forbidden):
        await bob.delete("typing_indicators", again["id"])
    with pytest.raises(Forbidden):
        await alice.update("typing_indicators", again["id"], {"expiresAt": 10**15})
    await alice.delete("typing_indicators", again["id"])
    assert (await next_event(bob_typing)).event == "delete"


async def test_cleanup_deletes_only_expired_indicators(chat):
    indicators = chat.db.resources.typing_indicators
    now = int(time.time() * 1000)
    old = await indicators.insert({"roomId": "r", "userId": "u", "username": "U", "expiresAt": now - 1})
    fresh = await indicators.insert({"roomId": "r", "userId": "v", "username": "V", "expiresAt": now + 60_000})
    await delete_expired_typing(chat.db)
    assert await indicators.get_or_none(old["id"]) is None
    assert await indicators.get_or_none(fresh["id"]) is not None


async def test_python_m_examples_chat_dev_serves_the_page_login_and_socket():
    # `make demo` runs the chat with --dev and no JWT_SECRET: the page and its login work.
    async with running_example("chat", None, dev=True, ready="Open the chat page") as (url, lines):
        page = url.replace("ws://", "http://")
        assert f"Open the chat page: {page}" in "".join(lines)
        async with aiohttp.ClientSession() as http:
            async with http.get(page) as resp:
                assert resp.status == 200
                assert "DEV ONLY" in await resp.text()
            async with http.get(url.replace("ws://", "http://") + "client.js") as resp:
                assert resp.status == 200
            async with http.post(page + "dev/login", json={"name": "dora"}) as resp:
                token = (await resp.json())["token"]
        async with Client(url, token=token) as dora:
            room = await dora.insert("chat_rooms", {"name": "from the entry point"})
            assert room["createdBy"] == "dora"


async def test_python_m_examples_chat_with_an_operator_secret_has_no_dev_login():
    async with running_example("chat", SECRET, ready="Open the chat page") as (url, _lines):
        http_url = url.replace("ws://", "http://").rstrip("/")
        async with aiohttp.ClientSession() as http:
            for body in ({"name": "alice"}, {"name": "system"}):
                async with http.post(f"{http_url}/dev/login", json=body) as resp:
                    assert resp.status in (404, 405)
                    assert "token" not in await resp.text()
        # The socket itself serves users whose tokens the operator's secret signs.
        async with Client(url, token=make_token(SECRET, "alice", name="Alice")) as alice:
            assert (await alice.insert("chat_rooms", {"name": "ops"}))["createdBy"] == "alice"


@pytest.mark.parametrize(
    ("argv", "env", "complaint"),
    [
        (["--dev"], {"JWT_SECRET": SECRET}, "--dev"),  # an operator's secret never meets /dev/login
        ([], {}, "JWT_SECRET"),  # no secret and no --dev: no well-known secret in production
    ],
)
def test_the_dev_login_needs_dev_and_no_operator_secret(monkeypatch, capsys, argv, env, complaint):
    monkeypatch.delenv("JWT_SECRET", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit:
        parse_options("chat", argv)
    assert exit.value.code == 2
    assert complaint in capsys.readouterr().err


def test_dev_options_use_the_development_secret(monkeypatch):
    # parse_options configures the process's logging: not this test process's.
    monkeypatch.setattr(examples.common, "configure_logging", lambda *args: None)
    monkeypatch.setattr(examples.common, "report_startup_errors", lambda **kwargs: None)
    monkeypatch.delenv("JWT_SECRET", raising=False)
    options = parse_options("chat", ["--dev"])
    assert (options.dev, options.jwt_secret) == (True, DEV_SECRET)
    monkeypatch.setenv("JWT_SECRET", SECRET)
    options = parse_options("chat", [])
    assert (options.dev, options.jwt_secret) == (False, SECRET)


async def test_without_dev_the_app_mounts_no_dev_login():
    options = Options(port=0, host="127.0.0.1", db=f"memory://chat-{uuid.uuid4().hex}", jwt_secret=SECRET)
    db, plugin, _jobs = await create_app(options)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{plugin.http_url}/dev/login", json={"name": "system"}) as resp:
                assert resp.status in (404, 405)
            async with http.get(f"{plugin.http_url}/") as resp:
                assert resp.status == 200  # the page itself is still served
    finally:
        await db.disconnect()


async def test_the_rooms_channel_admits_only_who_may_see_the_room(chat):
    alice, bob, carol = await chat.user("alice"), await chat.user("bob"), await chat.user("carol")
    secret = await alice.insert("chat_rooms", {"name": "secret", "isPrivate": True, "members": ["bob"]})
    channel = f"chat:{secret['id']}"
    async with alice.join(channel) as room:
        async with bob.join(channel) as bobs:
            added = await room.next(timeout=EVENT_TIMEOUT)
            assert (added.event, added.data["userId"]) == ("member_added", "bob")
            await bobs.send("typing", {"on": True})
            typing = await room.next(timeout=EVENT_TIMEOUT)
            assert (typing.event, typing.sender["userId"], typing.data) == ("typing", "bob", {"on": True})
            with pytest.raises(Forbidden):  # the room's channel carries typing only
                await bobs.send("message", {"text": "stored nowhere"})
        # An outsider, and a room that does not exist, get the same answer.
        for name in (channel, "chat:no-such-room", f"chat:{secret['id']}x"):
            with pytest.raises(Forbidden):
                await carol.join(name)
    assert await chat.db.resources.typing_indicators.count() == 0
