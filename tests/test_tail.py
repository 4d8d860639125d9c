"""``s3db tail`` as a user runs it: it waits for a server that is not up yet, and says at once
that a server needs a token instead of timing out."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

from s3db_ws_plugin.client import Client, Unauthorized

ROOT = Path(__file__).resolve().parent.parent
S3DB = str(Path(sys.executable).parent / "s3db")
TIMEOUT = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def app_env(s3db_jwt_secret):
    return {
        **os.environ,
        "S3DB_APP_PORT": "0",
        "S3DB_APP_STORE": f"memory://tail-{uuid.uuid4().hex}",
        "S3DB_APP_SECRET": s3db_jwt_secret,
    }


async def start(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        S3DB, *args, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def log_until(proc: asyncio.subprocess.Process, event: str) -> dict:
    seen = []
    async with asyncio.timeout(TIMEOUT):
        while line := await proc.stderr.readline():
            record = json.loads(line)
            seen.append(record["event"])
            if record["event"] == event:
                return record
    raise AssertionError(f"{event!r} never logged; got {seen}")


async def stop(proc: asyncio.subprocess.Process) -> int:
    proc.terminate()
    async with asyncio.timeout(TIMEOUT):
        await proc.communicate()
    return proc.returncode


async def test_tail_waits_for_a_server_that_is_not_up_yet(app_env, s3db_token):
    port = free_port()
    url = f"ws://127.0.0.1:{port}/"
    env = {**app_env, "S3DB_APP_PORT": str(port), "S3DB_TOKEN": s3db_token("tailer")}
    tail = await start("tail", url, "-r", "notes", env=env)
    waiting = await log_until(tail, "waiting for the server")
    assert waiting["url"] == url
    server = await start("serve", "tests.cli_app:make_db", env=env)
    try:
        await log_until(server, "listening")
        await log_until(tail, "subscribed")
        async with Client(url, token=s3db_token("writer")) as client:
            await client.insert("notes", {"title": "late but seen"})
        async with asyncio.timeout(TIMEOUT):
            line = json.loads(await tail.stdout.readline())
        assert (line["event"], line["data"]["title"]) == ("insert", "late but seen")
        assert await stop(tail) == 0
    finally:
        await stop(server)


async def test_tail_channel_prints_messages_and_presence_events(app_env, s3db_token):
    env = {**app_env, "S3DB_TOKEN": s3db_token("tailer")}
    server = await start("serve", "tests.cli_app:make_db", env=env)
    try:
        url = (await log_until(server, "listening"))["websocket"]
        tail = await start("tail", url, "--channel", "room:lobby", "--info", '{"name": "tail"}', env=env)
        joined = await log_until(tail, "joined")
        assert (joined["channel"], joined["members"]) == ("room:lobby", 1)

        async def line() -> dict:
            async with asyncio.timeout(TIMEOUT):
                return json.loads(await tail.stdout.readline())

        async with Client(url, token=s3db_token("ada")) as ada:
            room = await ada.join("room:lobby", info={"name": "Ada"})
            assert {m["info"]["name"] for m in room.members.values()} == {"tail", "Ada"}
            added = await line()
            assert (added["channel"], added["event"], added["from"]) == ("room:lobby", "member_added", None)
            assert (added["data"]["userId"], added["data"]["info"]) == ("ada", {"name": "Ada"})
            await room.send("typing", {"on": True})
            typing = await line()
            assert (typing["event"], typing["data"], typing["from"]["userId"]) == ("typing", {"on": True}, "ada")
            assert typing["timestamp"] > 0
            await room.update({"name": "Ada L."})
            updated = await line()
            assert (updated["event"], updated["data"]["info"]) == ("member_updated", {"name": "Ada L."})
        removed = await line()  # closing the socket leaves the channel
        assert (removed["event"], removed["data"]["userId"]) == ("member_removed", "ada")
        assert await stop(tail) == 0
    finally:
        await stop(server)


async def test_tail_needs_a_resource_or_a_channel(app_env):
    tail = await start("tail", "ws://127.0.0.1:1/", env=app_env)
    async with asyncio.timeout(TIMEOUT):
        out, err = await tail.communicate()
    assert tail.returncode == 2 and b"--resource or --channel" in err


async def test_tail_gives_up_after_its_wait(app_env):
    started = time.monotonic()
    tail = await start("tail", f"ws://127.0.0.1:{free_port()}/", "-r", "notes", "--wait", "1", env=app_env)
    async with asyncio.timeout(TIMEOUT):
        out, err = await tail.communicate()
    assert tail.returncode == 1 and out == b""
    record = json.loads(err.splitlines()[-1])
    assert record["event"] == "cannot subscribe" and "gave up after 1 s" in record["error"]
    assert time.monotonic() - started < 10


async def test_tail_without_token_is_told_the_server_requires_one(app_env):
    server = await start("serve", "tests.cli_app:make_db", env=app_env)
    try:
        url = (await log_until(server, "listening"))["websocket"]
        env = {k: v for k, v in app_env.items() if k not in ("S3DB_TOKEN", "S3DB_API_KEY")}
        started = time.monotonic()
        tail = await start("tail", url, "-r", "notes", env=env)
        async with asyncio.timeout(TIMEOUT):
            out, err = await tail.communicate()
        elapsed = time.monotonic() - started
        assert tail.returncode == 1 and out == b""
        record = json.loads(err.splitlines()[-1])
        assert record["code"] == "UNAUTHORIZED"
        assert record["error"].startswith("this server requires a token")
        assert "--token" in record["hint"]
        # Well before the server's 5 s auth deadline (the process start is most of it).
        assert elapsed < 4.5, elapsed
    finally:
        await stop(server)


async def test_client_without_credentials_learns_at_once_that_auth_is_required(
    s3db_database, s3db_plugin_factory, s3db_jwt_secret
):
    auth = {"drivers": [{"driver": "jwt", "config": {"secret": s3db_jwt_secret}}]}
    plugin = await s3db_plugin_factory(s3db_database, auth=auth, auth_timeout=30)
    started = time.monotonic()
    with pytest.raises(Unauthorized, match="requires a token"):
        await Client(plugin.url, reconnect=False).connect()
    assert time.monotonic() - started < 5


async def test_client_without_credentials_connects_where_none_are_needed(
    s3db_database, s3db_plugin_factory
):
    plugin = await s3db_plugin_factory(s3db_database)
    async with Client(plugin.url) as client:
        assert client.user is None
        assert (await client.ping()) is not None
