"""Channels across processes, as an operator runs them: two ``s3db serve`` processes on one
Redis or NATS, messages and presence between their members, the server-side broadcast and
presence, and a process killed with SIGKILL whose members disappear everywhere within the
configured presence timeout. Every process is real; so are Redis and NATS. Nothing reaches the
store."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from services import start_nats, start_redis
from ws_helpers import JWT_AUTH, connect, make_token, serve

from s3db_core import Database
from s3db_ws_plugin import WebSocketPlugin
from s3db_ws_plugin import channels as channels_module

TESTS = Path(__file__).resolve().parent
S3DB = str(Path(sys.executable).parent / "s3db")
DEADLINE = 30.0
PRESENCE_TIMEOUT = 2.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"ws://127.0.0.1:{port}/"
        self.http = f"http://127.0.0.1:{port}"

    async def presence(self, channel: str) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{self.http}/presence", params={"channel": channel}) as r:
                assert r.status == 200, await r.text()
                return await r.json()

    async def broadcast(self, channel: str, event: str, data: Any) -> None:
        async with aiohttp.ClientSession() as session:
            params = {"channel": channel, "event": event}
            async with session.post(f"{self.http}/broadcast", params=params, json=data) as r:
                assert r.status == 200, await r.text()


@asynccontextmanager
async def servers(tmp_path: Path, broker: str, count: int) -> AsyncIterator[list[Server]]:
    env = {
        **os.environ,
        "S3DB_APP_STORE": f"file://{tmp_path / 'store'}",
        "S3DB_APP_BROKER": broker,
        "S3DB_PRESENCE_TIMEOUT": str(PRESENCE_TIMEOUT),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    started: list[Server] = []
    try:
        for _ in range(count):
            port = free_port()
            proc = await asyncio.create_subprocess_exec(
                S3DB, "--log-format", "json", "--log-level", "warning", "serve",
                "channels_app:make", cwd=TESTS, env={**env, "S3DB_APP_PORT": str(port)},
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            server = Server(proc, port)
            started.append(server)
            await wait_listening(server)
        yield started
    finally:
        for server in started:
            if server.proc.returncode is None:
                server.proc.send_signal(signal.SIGTERM)
        for server in started:
            try:
                async with asyncio.timeout(15):
                    await server.proc.communicate()
            except TimeoutError:
                server.proc.kill()
                await server.proc.wait()


async def wait_listening(server: Server) -> None:
    end = time.monotonic() + DEADLINE
    while True:
        if server.proc.returncode is not None:
            err = await server.proc.stderr.read() if server.proc.stderr else b""
            raise AssertionError(f"the server exited: {err.decode()[-2000:]}")
        try:
            await server.presence("room:probe")
            return
        except (aiohttp.ClientError, OSError):
            assert time.monotonic() < end, f"nothing listens on {server.port}"
            await asyncio.sleep(0.05)


async def eventually(check: Any, what: str, timeout: float = DEADLINE) -> Any:
    end = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < end, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


async def next_frame(client: Any, predicate: Any, timeout: float = DEADLINE) -> dict[str, Any]:
    for i, frame in enumerate(client.inbox):
        if predicate(frame):
            return client.inbox.pop(i)
    end = time.monotonic() + timeout
    while True:
        frame = await client.recv(max(0.01, end - time.monotonic()))
        if predicate(frame):
            return frame
        client.inbox.append(frame)


def channel_event(name: str, event: str, user: str | None = None) -> Any:
    def matches(f: dict[str, Any]) -> bool:
        return (
            f.get("type") == "event"
            and f.get("channel") == name
            and f["event"] == event
            and (user is None or f["data"].get("userId") == user)
        )

    return matches


def users(members: list[dict[str, Any]]) -> set[Any]:
    return {m["userId"] for m in members}


async def test_messages_and_presence_cross_processes_and_a_killed_one_is_removed(
    tmp_path, shared_broker_url
):
    async with servers(tmp_path, shared_broker_url, 2) as (one, two):
        async with (
            connect(one.url, token=make_token("alice")) as alice,
            connect(two.url, token=make_token("bob")) as bob,
        ):
            answer = await alice.call("join", channel="room:1", info={"name": "Alice"})
            assert answer["type"] == "channel:joined"

            async def two_sees_alice() -> bool:
                return users(await two.presence("room:1")) == {"alice"}

            await eventually(two_sees_alice, "process two sees alice")
            joined = await bob.call("join", channel="room:1", info={"name": "Bob"})
            assert users(joined["members"]) == {"alice", "bob"}
            added = await next_frame(alice, channel_event("room:1", "member_added", "bob"))
            assert added["data"]["info"] == {"name": "Bob"}
            assert added["data"]["clientId"] == bob.hello["clientId"]

            # the same member list on both processes
            async def same() -> bool:
                a, b = await one.presence("room:1"), await two.presence("room:1")
                key = lambda m: m["clientId"]  # noqa: E731
                return users(a) == {"alice", "bob"} and sorted(a, key=key) == sorted(b, key=key)

            await eventually(same, "both processes list alice and bob")

            await alice.call("channel:message", channel="room:1", event="typing", data={"on": 1})
            got = await next_frame(bob, channel_event("room:1", "typing"))
            assert got["from"] == {"clientId": alice.hello["clientId"], "userId": "alice"}
            await bob.call("channel:update", channel="room:1", info={"name": "Bobby"})
            updated = await next_frame(alice, channel_event("room:1", "member_updated", "bob"))
            assert updated["data"]["info"] == {"name": "Bobby"}
            await one.broadcast("room:1", "notice", {"n": 1})
            notice = await next_frame(bob, channel_event("room:1", "notice"))
            assert notice["data"] == {"n": 1} and notice["from"]["userId"] is None

            # kill -9 the process bob is on: alice hears member_removed within the timeout
            killed_at = time.monotonic()
            two.proc.send_signal(signal.SIGKILL)
            removed = await next_frame(
                alice, channel_event("room:1", "member_removed", "bob"), timeout=DEADLINE
            )
            elapsed = time.monotonic() - killed_at
            assert removed["data"]["clientId"] == bob.hello["clientId"]
            assert elapsed < PRESENCE_TIMEOUT * 2 + 10, elapsed
            assert users(await one.presence("room:1")) == {"alice"}


async def test_a_process_that_starts_later_learns_the_members_and_a_stopped_one_says_bye(
    tmp_path, shared_broker_url
):
    async with servers(tmp_path, shared_broker_url, 1) as (one,):
        async with connect(one.url, token=make_token("alice")) as alice:
            await alice.call("join", channel="room:2", info={"x": 1})
            async with servers(tmp_path, shared_broker_url, 1) as (two,):

                async def two_knows() -> bool:
                    return users(await two.presence("room:2")) == {"alice"}

                await eventually(two_knows, "a late process learns the members")
                async with connect(two.url, token=make_token("carol")) as carol:
                    await carol.call("join", channel="room:2")
                    await next_frame(alice, channel_event("room:2", "member_added", "carol"))
            # two stopped (SIGTERM) with carol still in: removed at once, not after the timeout
            await next_frame(alice, channel_event("room:2", "member_removed", "carol"))
            assert users(await one.presence("room:2")) == {"alice"}


async def test_channel_rates_are_shared_through_the_redis_limiter(redis_url):
    options = {
        "auth": JWT_AUTH,
        "channels": {"chat:*": True},
        "rate_limit": {"limiter": "redis", "url": redis_url, "key": "user",
                       "prefix": f"rl{os.urandom(4).hex()}"},  # fmt: skip
        "channel_rate_limit": {"messages": 6},
    }
    async with (
        serve(url=None, **options) as (_, one),
        serve(url=None, **options) as (_, two),
        connect(one.url, token=make_token("spammer")) as a,
        connect(two.url, token=make_token("spammer")) as b,
    ):
        for client in (a, b):
            assert (await client.call("join", channel="chat:1"))["type"] == "channel:joined"
        answers = []
        for n in range(5):
            answers.append(await a.call("channel:message", channel="chat:1", data=n))
            answers.append(await b.call("channel:message", channel="chat:1", data=n))
        limited = [x for x in answers if x.get("code") == "RATE_LIMITED"]
        # 10 messages of one user on two servers against a budget of 6 per second
        assert len(limited) >= 3, answers
        assert all(x["retryAfterMs"] > 0 for x in limited)


def snapshot(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


async def test_channel_traffic_never_touches_the_store(redis_url, tmp_path):
    store = tmp_path / "store"
    broker = f"{redis_url}?prefix=t{os.urandom(6).hex()}"

    db = Database(f"file://{store}", broker=broker)
    await db.connect()
    try:
        before = snapshot(store)
        plugin = WebSocketPlugin(port=0, auth=JWT_AUTH, channels={"room:*": {"presence": True}},
                                 heartbeat_interval=None)  # fmt: skip
        await db.use_plugin(plugin)
        async with (
            connect(plugin.url, token=make_token("a")) as a,
            connect(plugin.url, token=make_token("b")) as b,
        ):
            await a.call("join", channel="room:1")
            await b.call("join", channel="room:1")
            for n in range(20):
                await a.call("channel:message", channel="room:1", event="typing", data=n)
            await b.call("channel:update", channel="room:1", info={"t": 1})
        assert snapshot(store) == before
    finally:
        await db.disconnect()


async def test_a_big_member_list_reaches_a_late_process_in_parts(shared_broker_url, monkeypatch):
    """Two servers in this process on one broker: the second one starts after 60 members with
    ~600 bytes of info each joined the first, and learns them all from a state sent in parts."""
    monkeypatch.setattr(channels_module, "STATE_PART_BYTES", 4096)
    options = {"auth": JWT_AUTH, "channels": {"room:*": {"presence": True}}}
    key = lambda m: m["clientId"]  # noqa: E731
    async with AsyncExitStack() as stack:
        one = await stack.enter_async_context(served(shared_broker_url, options))
        for n in range(60):
            # (max_queue=None: these clients read nothing, so nothing may hold up their close)
            client = await stack.enter_async_context(
                connect(one.url, token=make_token(f"u{n}"), max_queue=None)
            )
            answer = await client.call("join", channel="room:big", info={"bio": "x" * 600, "n": n})
            assert answer["type"] == "channel:joined", answer
        async with served(shared_broker_url, options) as two:

            async def complete() -> bool:
                return len(await two.presence("room:big")) == 60

            await eventually(complete, "the late process lists all 60 members")
            assert sorted(await two.presence("room:big"), key=key) == sorted(
                await one.presence("room:big"), key=key
            )
            await stack.aclose()  # every member's socket closes

            async def empty() -> bool:
                return await two.presence("room:big") == []

            await eventually(empty, "everyone left, on the other process too")


@asynccontextmanager
async def served(broker: str, options: dict[str, Any]) -> AsyncIterator[WebSocketPlugin]:
    db = Database(f"memory://{os.urandom(6).hex()}", broker=broker)
    await db.connect()
    try:
        plugin = WebSocketPlugin(port=0, heartbeat_interval=None, **options)
        await db.use_plugin(plugin)
        yield plugin
    finally:
        await db.disconnect()


@pytest.mark.parametrize("engine", ["redis", "nats"])
async def test_messages_and_presence_recover_after_the_broker_restarts(engine):
    """A private Redis or NATS is killed and started again under two servers: messages flow
    again and both list the same members, by themselves."""
    service = start_redis() if engine == "redis" else start_nats()
    try:
        url = f"{service.url}?prefix=ch{os.urandom(4).hex()}&publish_timeout=0.3"
        options = {"auth": JWT_AUTH, "channels": {"room:*": {"presence": True}},
                   "presence_timeout": 1.5}  # fmt: skip
        async with (
            served(url, options) as one,
            served(url, options) as two,
            connect(one.url, token=make_token("alice")) as alice,
            connect(two.url, token=make_token("bob")) as bob,
        ):
            await alice.call("join", channel="room:1")
            await bob.call("join", channel="room:1")
            key = lambda m: m["clientId"]  # noqa: E731

            async def same() -> bool:
                a, b = await one.presence("room:1"), await two.presence("room:1")
                return users(a) == {"alice", "bob"} and sorted(a, key=key) == sorted(b, key=key)

            await eventually(same, "both list alice and bob")
            service.restart()

            async def flows() -> bool:
                await alice.call("channel:message", channel="room:1", event="ping", data=1)
                try:
                    await next_frame(bob, channel_event("room:1", "ping"), timeout=0.5)
                except TimeoutError:
                    return False
                return True

            await eventually(flows, "messages flow again after the restart")
            await eventually(same, "both list alice and bob again")
    finally:
        service.stop()


async def test_a_hanging_broker_bounds_what_waits_for_it(monkeypatch):
    """Redis stops answering (SIGSTOP) while members keep sending: what waits for it stays
    within the outbox bound (the rest is dropped and counted), members on this process still
    get every message, and the other process hears again once Redis answers."""
    monkeypatch.setattr(channels_module, "OUTBOX_BYTES", 8192)
    service = start_redis()
    try:
        url = f"{service.url}?prefix=ch{os.urandom(4).hex()}&publish_timeout=0.3"
        options = {"auth": JWT_AUTH, "channels": {"room:*": True},
                   "channel_rate_limit": {"messages": 1000}}  # fmt: skip
        async with (
            served(url, options) as one,
            served(url, options) as two,
            connect(one.url, token=make_token("alice")) as alice,
            connect(one.url, token=make_token("bob")) as bob,
            connect(two.url, token=make_token("carol")) as carol,
        ):
            for client in (alice, bob, carol):
                await client.call("join", channel="room:1")
            assert service.process is not None
            os.kill(service.process.pid, signal.SIGSTOP)
            try:
                for _ in range(200):
                    answer = await alice.call("channel:message", channel="room:1", data="x" * 200)
                    assert answer["type"] == "channel:sent"
                channels = one.channels
                assert channels.dropped > 0
                assert channels._outbox_bytes <= 8192
                got = [f for f in await bob.sync() if f.get("type") == "event"]
                assert len(got) == 200  # this process's members miss nothing
            finally:
                os.kill(service.process.pid, signal.SIGCONT)

            async def flows() -> bool:
                await alice.call("channel:message", channel="room:1", event="after", data=1)
                try:
                    await next_frame(carol, channel_event("room:1", "after"), timeout=0.5)
                except TimeoutError:
                    return False
                return True

            await eventually(flows, "the other process hears again")
    finally:
        service.stop()
