"""The guide's whole app (docs/guide.md, "The whole app") as a reader runs it: ``s3db serve
notes_app:make_db``, its page at ``/`` in Chromium for two members of a board, and a third
user who is not a member."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from browser_helpers import chromium, pages_for
from test_docs import ROOT, blocks_of

from s3db_ws_plugin.client import Client

S3DB = str(Path(sys.executable).parent / "s3db")
SECRET = "guide-page-test-secret-with-enough-bytes"

pytestmark = pytest.mark.skipif(
    not os.path.exists("/usr/bin/chromium"), reason="Debian chromium is not installed (make test installs it)"
)


def token(user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")


@pytest.fixture
def notes_app(tmp_path: Path):
    """The guide's notes_app.py served by ``s3db serve``; yields its page URL."""
    [app] = [b for b in blocks_of(ROOT / "docs" / "guide.md") if b.file_name == "notes_app.py"]
    (tmp_path / "notes_app.py").write_text(app.code)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PORT": str(port), "JWT_SECRET": SECRET, "NOTES_DB": "memory://guide-page"}
    proc = subprocess.Popen(
        [S3DB, "--log-format", "json", "serve", "notes_app:make_db"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, "s3db serve did not start"
            line = proc.stderr.readline()
            if line.startswith("{") and json.loads(line)["event"] == "listening":
                listening = json.loads(line)
                break
        assert listening["pages"] == [f"http://127.0.0.1:{port}/"]
        yield listening
    finally:
        proc.terminate()
        proc.wait(15)
        proc.stderr.close()


def test_members_write_and_see_notes_live_outsiders_see_nothing(notes_app, request) -> None:
    async def make_board() -> str:
        async with Client(notes_app["websocket"], token=token("alice")) as alice:
            board = await alice.insert("boards", {"name": "Launch", "members": ["bob"]})
            await alice.insert("notes", {"boardId": board["id"], "text": "first note"})
            return board["id"]

    board = asyncio.run(make_board())
    page_url = notes_app["pages"][0]
    with chromium() as browser, pages_for(request, browser) as pages:
        sent: list[str] = []  # every address the pages asked a server for
        alice = pages.new()
        bob = pages.new()
        for page in (alice, bob):
            page.on("request", lambda req: sent.append(req.url))
            page.on("websocket", lambda ws: sent.append(ws.url))
        alice.goto(f"{page_url}#board={board}&token={token('alice')}")
        bob.goto(f"{page_url}#board={board}&token={token('bob')}")
        for page in (alice, bob):
            page.locator("#notes li", has_text="first note").wait_for()
        alice.fill("#text", "ship on friday")
        alice.press("#text", "Enter")
        bob.locator("#notes li", has_text="ship on friday").wait_for()
        assert bob.locator("#notes li").first.text_content() == "ship on friday"
        bob.fill("#text", "agreed")
        bob.press("#text", "Enter")
        alice.locator("#notes li", has_text="agreed").wait_for()

        assert sent and not any("token" in url for url in sent), sent  # the token stayed after the "#"

        carol = pages.new(f"{page_url}#board={board}&token={token('carol')}")
        deadline = time.monotonic() + 10  # until the page's list request has been refused
        while not any("belong" in line for line in pages.console):
            assert time.monotonic() < deadline, pages.console
            carol.wait_for_timeout(50)
        assert carol.locator("#notes li").count() == 0
