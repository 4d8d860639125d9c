"""The ``s3db`` command line as a user runs it: ``s3db serve`` starts an app module, ``s3db tail``
prints the events of a live server as JSON lines, and SIGINT ends both cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest

from s3db_ws_plugin.client import Client

ROOT = Path(__file__).resolve().parent.parent
S3DB = str(Path(sys.executable).parent / "s3db")
TIMEOUT = 15


@pytest.fixture
def app_env(s3db_jwt_secret):
    return {
        **os.environ,
        "S3DB_APP_PORT": "0",
        "S3DB_APP_STORE": f"memory://cli-{uuid.uuid4().hex}",
        "S3DB_APP_SECRET": s3db_jwt_secret,
    }


async def start(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        S3DB,
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def log_until(proc: asyncio.subprocess.Process, event: str, seen: list[dict]) -> dict:
    """Read JSON log lines from stderr until one has ``event``."""
    async with asyncio.timeout(TIMEOUT):
        while line := await proc.stderr.readline():
            record = json.loads(line)
            seen.append(record)
            if record["event"] == event:
                return record
    raise AssertionError(f"{event!r} never logged; got {[r['event'] for r in seen]}")


async def interrupt(proc: asyncio.subprocess.Process) -> tuple[int, bytes, bytes]:
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(TIMEOUT):
        out, err = await proc.communicate()
    return proc.returncode, out, err


async def test_serve_then_tail_prints_events_as_json_lines(app_env, s3db_token):
    server = await start("serve", "tests.cli_app:make_db", env=app_env)
    server_log: list[dict] = []
    started = await log_until(server, "listening", server_log)
    url = started["websocket"]
    assert started["level"] == "info" and "timestamp" in started

    token = s3db_token("tailer")
    tail = await start(
        "tail",
        url,
        "--resource",
        "notes",
        "--filter",
        '{"roomId": "r1"}',
        "--token",
        token,
        env=app_env,
    )
    tail_log: list[dict] = []
    subscribed = await log_until(tail, "subscribed", tail_log)
    assert subscribed["filter"] == {"roomId": "r1"}

    async with Client(url, token=s3db_token("writer")) as client:
        first = await client.insert("notes", {"title": "one", "roomId": "r1"})
        await client.insert("notes", {"title": "elsewhere", "roomId": "r2"})
        second = await client.insert("notes", {"title": "two", "roomId": "r1"})
        await client.update("notes", first["id"], {"title": "one!"})

    lines = []
    async with asyncio.timeout(TIMEOUT):
        while len(lines) < 3:
            lines.append(json.loads(await tail.stdout.readline()))
    assert [(e["event"], e["data"]["title"]) for e in lines] == [
        ("insert", "one"),
        ("insert", "two"),
        ("update", "one!"),
    ]
    assert lines[1]["data"] == second and lines[0]["resource"] == "notes"
    assert all(e["timestamp"] > 0 for e in lines)

    code, out, err = await interrupt(tail)
    assert code == 0 and out == b""
    assert token not in err.decode() + json.dumps(tail_log)  # never log tokens

    code, _, err = await interrupt(server)
    assert code == 0
    events = [json.loads(line)["event"] for line in err.splitlines()]
    assert events[-3:] == ["shutting down", "websocket server stopped", "stopped"]


async def test_tail_reports_a_rejected_token_without_printing_it(app_env):
    server = await start("serve", "tests.cli_app:make_db", env=app_env)
    started = await log_until(server, "listening", [])
    env = {**app_env, "S3DB_TOKEN": "not.a.valid-token"}
    tail = await start("tail", started["websocket"], "-r", "notes", env=env)
    async with asyncio.timeout(TIMEOUT):
        out, err = await tail.communicate()
    assert tail.returncode == 1 and out == b""
    record = json.loads(err.splitlines()[-1])
    assert record["event"] == "cannot subscribe" and record["code"] == "UNAUTHORIZED"
    assert "not.a.valid-token" not in err.decode()
    code, _, _ = await interrupt(server)
    assert code == 0


async def test_serve_rejects_a_target_it_cannot_load(app_env):
    proc = await start("serve", "tests.cli_app:nope", env=app_env)
    async with asyncio.timeout(TIMEOUT):
        out, err = await proc.communicate()
    assert proc.returncode == 2
    record = json.loads(err.splitlines()[-1])
    assert record["event"] == "cannot load the app" and "nope" in record["error"]
    usage = await start("tail", "ws://127.0.0.1:9/", "-r", "notes", "--filter", "[1]", env=app_env)
    async with asyncio.timeout(TIMEOUT):
        _, err = await usage.communicate()
    assert usage.returncode == 2 and b"must be a JSON object" in err
