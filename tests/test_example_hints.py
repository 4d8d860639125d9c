"""What ``python -m examples.<name> --dev`` prints about credentials: one recommendation, the
same everywhere (the token in an ``auth`` frame from browsers, an ``Authorization: Bearer``
header from services), never a token in a URL, and development tokens that work as printed."""

from __future__ import annotations

import re

import aiohttp
import pytest
from example_process import running_example

from s3db_ws_plugin.client import Client

LAST_LINE = {"chat": "Open ", "dashboard": "Open "}  # each example's last startup line


async def answered(url: str) -> None:
    """One request the example answers: its loop runs, so its SIGTERM handler is in place (the
    helper stops it with SIGTERM and expects exit code 0)."""
    async with aiohttp.ClientSession() as http, http.get(url.replace("ws://", "http://") + "health") as resp:
        assert resp.status == 200
EXAMPLES = ["chat", "collab", "dashboard", "iot", "leaderboard", "multitenant", "notifications"]


@pytest.mark.parametrize("name", EXAMPLES)
async def test_the_startup_lines_say_where_the_token_goes(name):
    ready = LAST_LINE.get(name, "Send a token")
    async with running_example(name, None, dev=True, ready=ready) as (url, lines):
        await answered(url)
        running = next(line for line in lines if "running on" in line)
        assert "auth frame" in running and "Authorization: Bearer" in running, running
        assert "?token=" not in "".join(lines)  # no URL carries a token


async def test_the_development_tokens_are_printed_alone_and_work():
    async with running_example("collab", None, dev=True, ready="Send a token") as (url, lines):
        out = "".join(lines)
        assert "?token=" not in out
        tokens = dict(re.findall(r"^  (alice|bob): (\S+)$", out, re.M))
        assert set(tokens) == {"alice", "bob"}
        assert '{"type": "auth", "token": TOKEN}' in out and "Authorization: Bearer" in out
        async with Client(url, token=tokens["bob"]) as bob:
            assert (await bob.list("documents")).items == []  # signed in: the guard knows bob
