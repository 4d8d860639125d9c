"""The collab page at ``/`` in real Chromium: two people edit one document and see each other's cursor."""

from __future__ import annotations

import pytest
from browser_helpers import (
    PHONE,
    chromium,
    cut_placeholders,
    header_problems,
    horizontal_overflow,
    outside_viewport,
    pages_for,
    served,
    shoot,
)
from playwright.sync_api import expect

from examples.collab.app import create_app


@pytest.fixture(scope="module")
def chromium_browser():
    with chromium() as browser:
        yield browser


def sign_in(page, name: str) -> None:
    expect(page.locator(".dev-banner")).to_contain_text("DEV ONLY")
    page.fill("#login-name", name)
    page.click("#login button[type=submit]")
    expect(page.locator("#connection")).to_have_text("connected")


def stored_text(server, doc_id: str) -> str:
    # The server's own copy (content is protected: no client ever receives it).
    return server.call(lambda: server.db.resources.documents.get(doc_id))["content"]


def test_two_people_edit_one_document_with_live_cursors(request, chromium_browser):
    with served(create_app) as server, pages_for(request, chromium_browser) as pages:
        alice = pages.new(f"{server.http_url}/")
        bob = pages.new(f"{server.http_url}/", viewport=PHONE)
        sign_in(alice, "alice")
        sign_in(bob, "bob")
        assert cut_placeholders(alice) == []  # the new-document form's hints fit the side bar
        assert cut_placeholders(bob) == []
        assert header_problems(bob) == []

        # Alice writes a document she shares with Bob.
        alice.fill("#doc-title", "Plan")
        alice.fill("#doc-collaborators", "bob")
        alice.click("#new-document button[type=submit]")
        expect(alice.locator("#doc-name")).to_have_text("Plan")
        expect(alice.locator("#doc-sharing")).to_have_text("Yours, shared with bob.")
        # A new document counts its edits from none (its record's own version starts at 1).
        expect(alice.locator("#doc-edits")).to_have_text("no edits yet")
        alice.fill("#share-with", "")
        assert cut_placeholders(alice) == []  # the sharing box's hint, beside its button
        alice.fill("#share-with", "bob")
        expect(alice.locator("#editor")).to_be_editable()  # once the document is loaded
        alice.locator("#editor").press_sequentially("Hello world")
        doc_id = alice.evaluate("new URLSearchParams(location.hash.slice(1)).get('doc')")

        # Bob finds it among the documents shared with him and gets the text so far.
        bob.click("#refresh")
        bob.click("#documents button:has-text('Plan')")
        expect(bob.locator("#editor")).to_have_value("Hello world")
        expect(bob.locator("#doc-sharing")).to_have_text("Owned by alice, shared with bob.")
        expect(bob.locator("#share")).to_be_hidden()  # only the owner changes the sharing

        # Each sees the other: in the presence list (the document's channel), and as a labelled
        # cursor in the text.
        expect(bob.locator("#presence .person[data-user=alice]")).to_be_visible()
        expect(alice.locator("#presence .person[data-user=bob]")).to_be_visible()
        expect(alice.locator("#presence .person")).to_have_count(2)
        expect(alice.locator("#presence .person")).to_contain_text(["alice (you)", "bob"])
        # Alice's cursor reached Bob when he arrived, before she moved it.
        expect(bob.locator(".remote-cursor[data-user=alice]")).to_have_attribute("data-position", "11")
        # Moving cursors goes through the channel: no store request (they used to be records).
        requests = server.db.storage.requests
        requests.reset()
        alice.locator("#editor").press("Home")
        expect(bob.locator(".remote-cursor[data-user=alice]")).to_have_attribute("data-position", "0")
        expect(bob.locator(".remote-cursor[data-user=alice] .label")).to_have_text("alice")
        for _ in range(5):
            alice.locator("#editor").press("ArrowRight")
        expect(bob.locator(".remote-cursor[data-user=alice]")).to_have_attribute("data-position", "5")
        assert requests.snapshot() == {}
        assert server.call(lambda: server.db.resources.cursors.count()) == 0
        alice.locator("#editor").press("Home")
        expect(bob.locator(".remote-cursor[data-user=alice]")).to_have_attribute("data-position", "0")

        # Bob types at the end; Alice's text and the server's follow, and his cursor moves there.
        bob.locator("#editor").press("End")
        bob.locator("#editor").press_sequentially(", from bob")
        expect(alice.locator("#editor")).to_have_value("Hello world, from bob")
        expect(alice.locator(".remote-cursor[data-user=bob]")).to_have_attribute("data-position", "21")
        alice.locator("#editor").press("Home")
        # Alice types at the start meanwhile: both end with the server's text.
        alice.locator("#editor").press_sequentially(">> ")
        for page in (alice, bob):
            expect(page.locator("#editor")).to_have_value(">> Hello world, from bob")
        # Bob's cursor moved with the text Alice put before it.
        expect(alice.locator(".remote-cursor[data-user=bob]")).to_have_attribute("data-position", "24")
        assert stored_text(server, doc_id) == ">> Hello world, from bob"
        edits = server.call(lambda: server.db.resources.documents.get(doc_id))["version"]
        assert edits >= 3  # at least one edit per burst of typing
        for page in (alice, bob):
            expect(page.locator("#doc-edits")).to_have_text(f"{edits} edits")
        shoot(alice, "collab-desktop")
        shoot(bob, "collab-phone")
        assert horizontal_overflow(bob) == 0
        assert pages.errors() == []

        # Carol is not a collaborator: the document is not in her list and its link answers as a
        # missing document would (the read rule hides it).
        carol = pages.new(f"{server.http_url}/")
        sign_in(carol, "carol")
        expect(carol.locator("#no-documents")).to_be_visible()
        carol.goto(f"{server.http_url}/#doc={doc_id}")
        expect(carol.locator("#status")).to_contain_text("NOT_FOUND")
        expect(carol.locator("#editor")).to_have_value("")

        # Bob closes his page: he leaves Alice's presence list and his cursor goes with him.
        bob.close()
        expect(alice.locator("#presence .person")).to_contain_text(["alice (you)"])
        expect(alice.locator("#presence .person")).to_have_count(1)
        expect(alice.locator(".remote-cursor")).to_have_count(0)


def test_on_a_phone_an_opened_document_is_in_view(request, chromium_browser):
    with served(create_app) as server, pages_for(request, chromium_browser) as pages:
        documents = server.db.resources.documents
        for i in range(10):
            doc = {"title": f"Notes {i:02}", "ownerId": "alice", "collaborators": ["bob"]}
            server.call(lambda doc=doc: documents.insert(doc))
        bob = pages.new(f"{server.http_url}/", viewport=PHONE)
        sign_in(bob, "bob")
        assert header_problems(bob) == []
        expect(bob.locator("#documents button")).to_have_count(10)
        bob.locator("#documents button").last.click()
        editor = bob.locator("#editor")
        expect(editor).to_be_editable()
        assert outside_viewport(editor) is None
        editor.press_sequentially("from a phone")
        assert outside_viewport(editor) is None
        assert horizontal_overflow(bob) == 0
        assert pages.errors() == []
