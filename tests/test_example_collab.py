"""The collaborative editing example end to end, over real sockets.

Alice owns a document and shares it with Bob; Eve is signed in but not invited. Each connection
records every frame it receives, so the tests assert exactly what each user sees, including
what they must not see (the document's content, anything at all for Eve).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import asynccontextmanager

import pytest
import pytest_asyncio
from example_process import running_example
from ws_helpers import connect

from examples.collab.app import apply_operation, create_app, remove_idle_cursors
from examples.common import Options, make_token
from s3db_ws_plugin.client import Client, Forbidden

SECRET = "collab-test-secret-with-enough-bytes-for-hs256"
EVENT_TIMEOUT = 5.0


@asynccontextmanager
async def serving(url):
    options = Options(port=0, host="127.0.0.1", db=url, jwt_secret=SECRET)
    db, plugin, _jobs = await create_app(options)
    try:
        yield db, plugin
    finally:
        await db.disconnect()


@pytest_asyncio.fixture
async def app():
    async with serving(f"memory://collab-{uuid.uuid4().hex}") as served:
        yield served


def user(plugin, name):
    return connect(plugin.url, token=make_token(SECRET, name, name=name.title()))


async def ok(client, type, **fields):
    reply = await client.call(type, **fields)
    assert reply["type"] != "error", reply
    return reply


async def refused(client, type, code="FORBIDDEN", **fields):
    reply = await client.call(type, **fields)
    assert (reply["type"], reply.get("code")) == ("error", code), reply
    return reply


def seen(frames):
    """(resource, event, id) of each event frame."""
    return [(f["resource"], f["event"], f["data"]["id"]) for f in frames if f["type"] == "event"]


async def shared_document(alice, *collaborators):
    reply = await ok(
        alice,
        "insert",
        resource="documents",
        data={"title": "Plan", "ownerId": "eve", "content": "sneaked in", "collaborators": list(collaborators)},
    )
    return reply["data"]


async def test_collaborators_edit_together_and_content_never_leaves_the_server(app):
    db, plugin = app
    async with user(plugin, "alice") as alice, user(plugin, "bob") as bob, user(plugin, "eve") as eve:
        doc = await shared_document(alice, "bob")
        # The create guard decides the owner; the text comes only from operations.
        assert doc["ownerId"] == "alice" and doc["version"] == 0
        assert "content" not in doc
        assert (await db.resources.documents.get(doc["id"]))["content"] == ""
        doc_id = doc["id"]

        for client in (alice, bob):
            sub = await ok(client, "subscribe", resource="documents", filter={"id": doc_id})
            assert sub["filter"] == {"id": doc_id}
            await ok(client, "subscribe", resource="document_operations", filter={"documentId": doc_id})
            await ok(client, "subscribe", resource="cursors", filter={"documentId": doc_id})

        # Bob types; the guard stamps who and when, whatever the client claims.
        typed = await ok(
            bob,
            "insert",
            resource="document_operations",
            data={"documentId": doc_id, "type": "insert", "position": 0, "text": "Hello", "userId": "alice"},
        )
        op1 = typed["data"]
        assert op1["userId"] == "bob" and isinstance(op1["timestamp"], int)
        await ok(
            alice,
            "insert",
            resource="document_operations",
            data={"documentId": doc_id, "type": "insert", "position": 5, "text": " world!"},
        )
        await ok(
            alice,
            "insert",
            resource="document_operations",
            data={"documentId": doc_id, "type": "delete", "position": 11, "length": 1},
        )

        stored = await db.resources.documents.get(doc_id)
        assert (stored["content"], stored["version"], stored["lastEditedBy"]) == ("Hello world", 3, "alice")

        for client in (alice, bob):
            frames = await client.sync()
            events = [f for f in frames if f["type"] == "event"]
            ops = [e["data"] for e in events if e["resource"] == "document_operations"]
            docs = [e["data"] for e in events if e["resource"] == "documents"]
            assert [op["type"] for op in ops] == ["insert", "insert", "delete"]
            # Documents broadcast their updates (version, who edited) but never the content.
            assert [d["version"] for d in docs] == [1, 2, 3]
            assert all("content" not in d for d in docs)
            assert all(e["event"] == "update" for e in events if e["resource"] == "documents")
            # Replaying the live operations in order gives the server's text.
            text = ""
            for op in ops:
                text = apply_operation(text, op)
            assert text == "Hello world"

        # A get never shows the content either, and filtering on it is refused.
        got = await ok(bob, "get", resource="documents", id=doc_id)
        assert "content" not in got["data"] and got["data"]["version"] == 3
        await refused(bob, "list", resource="documents", filter={"content": "Hello world"})

        # Carol joins late: she replays the log in version order and gets the same text.
        await ok(alice, "update", resource="documents", id=doc_id, data={"collaborators": ["bob", "carol"]})
        async with user(plugin, "carol") as carol:
            log = await ok(carol, "list", resource="document_operations", filter={"documentId": doc_id})
            text = ""
            for op in sorted(log["data"], key=lambda op: op["version"]):
                text = apply_operation(text, op)
            assert text == "Hello world"
            shared = await ok(carol, "list", resource="documents")
            assert [d["id"] for d in shared["data"]] == [doc_id]
            assert "content" not in shared["data"][0]

        # Eve saw nothing at all.
        assert await eve.sync() == []


async def test_the_seeds_subscribe_form_names_the_document_by_document_id(app):
    # The seed subscribes to documents with {documentId}: accepted for its owner and
    # collaborators, and turned into the filter on the document's own id.
    db, plugin = app
    async with user(plugin, "alice") as alice, user(plugin, "bob") as bob, user(plugin, "eve") as eve:
        doc_id = (await shared_document(alice, "bob"))["id"]
        other_id = (await shared_document(alice, "bob"))["id"]
        for client in (alice, bob):
            sub = await ok(client, "subscribe", resource="documents", filter={"documentId": doc_id})
            assert sub["filter"] == {"id": doc_id}
        await refused(eve, "subscribe", resource="documents", filter={"documentId": doc_id})
        await refused(eve, "subscribe", resource="documents", filter={"documentId": "no-such-document"})
        await refused(bob, "subscribe", resource="documents", filter={"documentId": {"$ne": "x"}})
        await refused(bob, "subscribe", resource="documents", filter={"documentId": doc_id, "id": other_id})
        await ok(alice, "update", resource="documents", id=doc_id, data={"title": "Renamed"})
        await ok(alice, "update", resource="documents", id=other_id, data={"title": "Elsewhere"})
        assert [(e, i) for _, e, i in seen(await bob.sync())] == [("update", doc_id)]


async def test_outsiders_are_refused_everywhere(app):
    db, plugin = app
    async with user(plugin, "alice") as alice, user(plugin, "eve") as eve:
        doc_id = (await shared_document(alice, "bob"))["id"]
        await ok(alice, "insert", resource="document_operations",
                 data={"documentId": doc_id, "type": "insert", "position": 0, "text": "secret plan"})
        cursor = await ok(alice, "insert", resource="cursors", data={"documentId": doc_id, "position": 0})
        op_id = (await db.resources.document_operations.query({"documentId": doc_id}))[0]["id"]

        # Subscribing needs a document the user may access; without one it is refused.
        await refused(eve, "subscribe", resource="documents", filter={"id": doc_id})
        await refused(eve, "subscribe", resource="document_operations", filter={"documentId": doc_id})
        await refused(eve, "subscribe", resource="cursors", filter={"documentId": doc_id})
        for resource in ("documents", "document_operations", "cursors"):
            missing = await refused(eve, "subscribe", resource=resource)
            assert "filter" in missing["message"]
        await refused(eve, "subscribe", resource="document_operations", filter={"documentId": {"$ne": "x"}})
        # Reading, writing, listing: refused, and a missing document looks the same. A document
        # the read rule hides answers NOT_FOUND exactly like a missing one (read rule before guards).
        for target in (doc_id, "no-such-document"):
            await refused(eve, "get", "NOT_FOUND", resource="documents", id=target)
            await refused(eve, "update", "NOT_FOUND", resource="documents", id=target, data={"title": "mine"})
            await refused(eve, "delete", "NOT_FOUND", resource="documents", id=target)
            await refused(eve, "list", resource="document_operations", filter={"documentId": target})
            await refused(eve, "insert", resource="document_operations",
                          data={"documentId": target, "type": "insert", "position": 0, "text": "x"})
            await refused(eve, "insert", resource="cursors", data={"documentId": target, "position": 0})
        await refused(eve, "get", resource="document_operations", id=op_id)
        await refused(eve, "get", resource="cursors", id=cursor["data"]["id"])
        await refused(eve, "list", resource="cursors")
        # Listing documents only ever shows the user's own or shared ones.
        for filter in (None, {"ownerId": "alice"}, {"collaborators[]": "bob"}):
            listed = await ok(eve, "list", resource="documents", filter=filter)
            assert listed["data"] == []
        assert (await db.resources.documents.get(doc_id))["title"] == "Plan"
        assert await eve.sync() == []


async def test_only_the_owner_manages_and_the_server_keeps_the_text(app):
    db, plugin = app
    async with user(plugin, "alice") as alice, user(plugin, "bob") as bob:
        doc_id = (await shared_document(alice, "bob"))["id"]
        await ok(alice, "subscribe", resource="documents", filter={"id": doc_id})

        # Collaborators rename; alice sees the update, without the content.
        await ok(bob, "update", resource="documents", id=doc_id, data={"title": "Plan B"})
        assert [(e["data"]["title"], "content" in e["data"]) for e in await alice.events()] == [("Plan B", False)]
        # Only the owner changes collaborators or deletes; nobody changes the owner or the text.
        await refused(bob, "update", resource="documents", id=doc_id, data={"collaborators": ["bob", "eve"]})
        await refused(bob, "delete", resource="documents", id=doc_id)
        await refused(alice, "update", resource="documents", id=doc_id, data={"ownerId": "bob"})
        for field, value in (("content", "overwritten"), ("version", 99)):
            await refused(bob, "update", resource="documents", id=doc_id, data={field: value})
        # The operation log is append-only and operations must be well formed.
        op = await ok(bob, "insert", resource="document_operations",
                      data={"documentId": doc_id, "type": "insert", "position": 0, "text": "x"})
        await refused(bob, "update", resource="document_operations", id=op["data"]["id"], data={"text": "y"})
        await refused(bob, "delete", resource="document_operations", id=op["data"]["id"])
        bad = await refused(bob, "insert", "VALIDATION_ERROR", resource="document_operations",
                            data={"documentId": doc_id, "type": "delete", "position": 0, "text": "x"})
        assert {e["field"] for e in bad["details"]} == {"length", "text"}
        assert (await db.resources.documents.get(doc_id))["content"] == "x"

        # Removing bob takes effect at once for new requests.
        await ok(alice, "update", resource="documents", id=doc_id, data={"collaborators": []})
        await refused(bob, "get", "NOT_FOUND", resource="documents", id=doc_id)  # hidden now
        await refused(bob, "insert", resource="document_operations",
                      data={"documentId": doc_id, "type": "insert", "position": 0, "text": "late"})

        # Deleting a document deletes its log and cursors.
        await ok(alice, "insert", resource="cursors", data={"documentId": doc_id, "position": 1})
        await ok(alice, "delete", resource="documents", id=doc_id)
        assert await db.resources.document_operations.query({"documentId": doc_id}) == []
        assert await db.resources.cursors.query({"documentId": doc_id}) == []


async def test_a_removed_collaborator_loses_the_documents_streams_at_once(app):
    db, plugin = app
    async with user(plugin, "alice") as alice, user(plugin, "bob") as bob:
        doc_id = (await shared_document(alice, "bob"))["id"]
        streams = [("documents", {"id": doc_id}), ("document_operations", {"documentId": doc_id}),
                   ("cursors", {"documentId": doc_id})]
        for resource, filter in streams:
            await ok(bob, "subscribe", resource=resource, filter=filter)
        await ok(alice, "update", resource="documents", id=doc_id, data={"title": "Renamed"})
        assert seen(await bob.sync()) == [("documents", "update", doc_id)]

        # The update that removes bob returns once his three subscriptions are revoked, and
        # what it changes (here a new title too) never reaches him: at most that it left.
        await ok(alice, "update", resource="documents", id=doc_id,
                 data={"collaborators": [], "title": "Without Bob"})
        frames = await bob.sync()
        events = [(f["event"], f["data"]) for f in frames if f["type"] == "event"]
        assert events in ([], [("leave", {"id": doc_id})])
        assert "Without Bob" not in json.dumps(frames)
        revoked = [f for f in frames if f["type"] == "error"]
        assert [(f["code"], f["details"]) for f in revoked] == [
            ("FORBIDDEN", {"resource": resource, "filter": filter, "revoked": True})
            for resource, filter in streams
        ]
        # From now on bob sees nothing of it: not the edits, not the cursors.
        await ok(alice, "insert", resource="document_operations",
                 data={"documentId": doc_id, "type": "insert", "position": 0, "text": "secret"})
        await ok(alice, "insert", resource="cursors", data={"documentId": doc_id, "position": 3})
        assert await bob.sync() == []


async def test_cursors_move_only_by_their_own_user(app):
    db, plugin = app
    async with user(plugin, "alice") as alice, user(plugin, "bob") as bob:
        doc_id = (await shared_document(alice, "bob"))["id"]
        await ok(alice, "subscribe", resource="cursors", filter={"documentId": doc_id})

        created = await ok(bob, "insert", resource="cursors",
                           data={"documentId": doc_id, "position": 3, "userId": "alice", "username": "Alice"})
        cursor = created["data"]
        assert (cursor["userId"], cursor["username"]) == ("bob", "Bob")

        # The seed's `ctx.userId === user.id` compares the stored cursor's owner: alice may not
        # move bob's cursor, however she fills in her patch.
        await refused(alice, "update", resource="cursors", id=cursor["id"], data={"position": 9})
        await refused(alice, "update", resource="cursors", id=cursor["id"], data={"position": 9, "userId": "alice"})
        await refused(alice, "delete", resource="cursors", id=cursor["id"])
        # Bob moves it; he cannot hand it over or move it to another document.
        moved = await ok(bob, "update", resource="cursors", id=cursor["id"],
                         data={"position": 7, "selectionEnd": 9, "userId": "alice", "documentId": "other"})
        assert (moved["data"]["position"], moved["data"]["userId"], moved["data"]["documentId"]) == (7, "bob", doc_id)
        await ok(bob, "delete", resource="cursors", id=cursor["id"])

        events = await alice.events()
        assert [(e["event"], e["data"]["position"]) for e in events] == [("insert", 3), ("update", 7), ("delete", 7)]

        # Cursors of users who went away are swept (a delete event each).
        stale = await ok(bob, "insert", resource="cursors", data={"documentId": doc_id, "position": 0})
        assert await remove_idle_cursors(db, max_age=3600) == 0
        assert await remove_idle_cursors(db, max_age=0) == 1
        assert seen(await alice.events()) == [
            ("cursors", "insert", stale["data"]["id"]),
            ("cursors", "delete", stale["data"]["id"]),
        ]


async def test_concurrent_edits_converge_on_the_servers_text(ws_store_url):
    # On a real S3 server the writes interleave; operations must still be applied one by one.
    async with (
        serving(ws_store_url) as (db, plugin),
        Client(plugin.url, token=make_token(SECRET, "alice")) as alice,
        Client(plugin.url, token=make_token(SECRET, "bob")) as bob,
    ):
        doc_id = (await alice.insert("documents", {"title": "Race", "collaborators": ["bob"]}))["id"]
        live = await alice.subscribe("document_operations", {"documentId": doc_id})
        await asyncio.gather(*(
            writer.insert("document_operations",
                          {"documentId": doc_id, "type": "insert", "position": i, "text": f"{name}{i} "})
            for i in range(5)
            for writer, name in ((alice, "a"), (bob, "b"))
        ))
        stored = await db.resources.documents.get(doc_id)
        # Every operation is in the text (requests of one socket run concurrently too, so an
        # insert may land inside another's word: compare the characters, not the words).
        sent = "".join(f"{name}{i} " for i in range(5) for name in "ab")
        assert stored["version"] == 10 and sorted(stored["content"]) == sorted(sent)

        # Live: operations arrive in the order the server applied them.
        text = ""
        for _ in range(10):
            text = apply_operation(text, (await live.next(EVENT_TIMEOUT)).data)
        assert text == stored["content"]
        # Later: the log replayed in version order gives the same text.
        log = (await bob.list("document_operations", {"documentId": doc_id})).items
        assert sorted(op["version"] for op in log) == list(range(1, 11))
        text = ""
        for op in sorted(log, key=lambda op: op["version"]):
            text = apply_operation(text, op)
        assert text == stored["content"]


@pytest.mark.parametrize(
    ("text", "op", "expected"),
    [
        ("", {"type": "insert", "position": 0, "text": "ab"}, "ab"),
        ("ab", {"type": "insert", "position": 99, "text": "c"}, "abc"),
        ("abcd", {"type": "delete", "position": 1, "length": 2}, "ad"),
        ("ab", {"type": "delete", "position": 1, "length": 50}, "a"),
    ],
)
def test_apply_operation(text, op, expected):
    assert apply_operation(text, op) == expected


async def test_python_m_examples_collab_runs():
    async with running_example("collab", SECRET) as (url, _lines):
        async with connect(url, token=make_token(SECRET, "alice")) as alice:
            doc = await ok(alice, "insert", resource="documents", data={"title": "From the entry point"})
            await ok(alice, "insert", resource="document_operations",
                     data={"documentId": doc["data"]["id"], "type": "insert", "position": 0, "text": "hi"})
            got = await ok(alice, "get", resource="documents", id=doc["data"]["id"])
            assert got["data"]["version"] == 1 and "content" not in got["data"]


async def test_the_documents_channel_carries_cursors_to_collaborators_only(app):
    db, plugin = app
    async with user(plugin, "alice") as alice:
        doc = await shared_document(alice, "bob")
    channel = f"doc:{doc['id']}"
    token = lambda name: make_token(SECRET, name, name=name.title())  # noqa: E731
    async with Client(plugin.url, token=token("alice")) as ada, Client(plugin.url, token=token("bob")) as bob, \
            Client(plugin.url, token=token("carol")) as carol:  # fmt: skip
        async with ada.join(channel) as room, bob.join(channel) as bobs:
            assert {m["userId"] for m in bobs.members.values()} == {"alice", "bob"}
            await bobs.send("cursor", {"position": 3, "selectionEnd": 3})
            moved = await room.next(timeout=EVENT_TIMEOUT)
            while moved.event != "cursor":  # bob's member_added comes first
                moved = await room.next(timeout=EVENT_TIMEOUT)
            assert (moved.sender["userId"], moved.data["position"]) == ("bob", 3)
            for name in (channel, "doc:missing"):
                with pytest.raises(Forbidden):
                    await carol.join(name)
    assert await db.resources.cursors.count() == 0
