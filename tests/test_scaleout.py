"""Several processes on one broker, as an operator runs them: server processes (``s3db serve``),
plain writer processes, ``--workers N`` on one port, and a server killed with SIGKILL while its
subscribers wait to resume. Every process is real; so are Redis and NATS."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from s3db_ws_plugin.client import Backoff, Client

TESTS = Path(__file__).resolve().parent
S3DB = str(Path(sys.executable).parent / "s3db")
DEADLINE = 30.0
FAST = Backoff(initial=0.05, maximum=0.3, jitter=0.0)
SHARED = [e for e in ("redis", "nats") if importlib.util.find_spec(f"s3db_core.brokers.{e}")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(params=SHARED)
def shared_broker(request: pytest.FixtureRequest) -> str:
    base = request.getfixturevalue(f"{request.param}_url")
    return f"{base}?prefix=t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def app_env(tmp_path: Path) -> dict[str, str]:
    """Every process of a test shares one file store (the source of truth) and one port."""
    return {
        **os.environ,
        "S3DB_APP_STORE": f"file://{tmp_path / 'store'}",
        "S3DB_APP_PORT": str(free_port()),
        "PYTHONPATH": str(TESTS),
    }


class Servers:
    """Server and writer processes of one test; all are stopped at the end."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[asyncio.subprocess.Process] = []

    async def serve(
        self, *args: str, port: int | None = None, **env: str
    ) -> asyncio.subprocess.Process:
        port = port or int(self.env["S3DB_APP_PORT"])
        proc = await asyncio.create_subprocess_exec(
            S3DB, "--log-format", "json", "--log-level", "warning", "serve", "scaleout_app:make",
            *args, cwd=TESTS, env={**self.env, "S3DB_APP_PORT": str(port), **env},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self.procs.append(proc)
        await wait_listening(port, proc)
        return proc

    async def run(self, *args: str, **env: str) -> None:
        """A plain writer process, to completion."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(TESTS / "scaleout_app.py"), *args, cwd=TESTS,
            env={**self.env, **env}, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(DEADLINE):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                async with asyncio.timeout(15):
                    await proc.communicate()
            except TimeoutError:
                proc.kill()
                await proc.wait()


@asynccontextmanager
async def processes(env: dict[str, str]) -> AsyncIterator[Servers]:
    servers = Servers(env)
    try:
        yield servers
    finally:
        await servers.close()


@asynccontextmanager
async def writer(env: dict[str, str]) -> AsyncIterator[Any]:
    """This test process as a plain writer process: the app's ``notes`` on the shared store and
    broker (no server)."""
    sys.path.insert(0, str(TESTS))
    from scaleout_app import NOTES

    from s3db_core import Database

    db = Database(env["S3DB_APP_STORE"], broker=env["S3DB_APP_BROKER"])
    await db.connect()
    try:
        yield await db.create_resource("notes", NOTES, timestamps=True)
    finally:
        await db.disconnect()


async def write(notes: Any, count: int, prefix: str) -> None:
    for n in range(count):
        await notes.insert({"title": f"{prefix}{n}", "roomId": "r1", "n": n})


async def worker_info(port: int) -> dict[str, Any]:
    """``GET /worker`` on a new connection (the kernel picks the worker per connection)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"http://127.0.0.1:{port}/worker") as response:
            return await response.json()


async def wait_listening(port: int, proc: asyncio.subprocess.Process) -> None:
    end = time.monotonic() + DEADLINE
    while True:
        if proc.returncode is not None:
            err = await proc.stderr.read() if proc.stderr else b""
            raise AssertionError(
                f"the server exited with {proc.returncode}: {err.decode()[-2000:]}"
            )
        try:
            await worker_info(port)
            return
        except (aiohttp.ClientError, OSError):
            if time.monotonic() > end:
                raise AssertionError(f"nothing listens on {port}") from None
            await asyncio.sleep(0.05)


async def wait_workers(port: int, count: int) -> None:
    """Until each of ``count`` workers answered (the parent starts them one after the other)."""
    seen: set[int] = set()
    end = time.monotonic() + DEADLINE
    while len(seen) < count:
        seen.add((await worker_info(port))["worker"])
        assert time.monotonic() < end, f"workers answering: {seen}"


async def read_until(sub: Any, count: int, timeout: float = DEADLINE) -> list[Any]:
    events = []
    async with asyncio.timeout(timeout):
        while len(events) < count:
            events.append(await sub.__anext__())
    return events


# -- --workers ------------------------------------------------------------------------------------
async def test_workers_are_refused_without_a_shared_broker(app_env):
    proc = await asyncio.create_subprocess_exec(
        S3DB, "--log-format", "json", "serve", "scaleout_app:make", "--workers", "2",
        cwd=TESTS, env={**app_env, "S3DB_APP_BROKER": "local"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(DEADLINE):
        _, err = await proc.communicate()
    assert proc.returncode != 0
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    said = " ".join(str(record) for record in lines)
    assert "--workers needs a shared broker" in said, err.decode()[-2000:]


async def test_workers_serve_one_port_and_every_worker_delivers(app_env, shared_broker):
    env = {**app_env, "S3DB_APP_BROKER": shared_broker}
    port = int(env["S3DB_APP_PORT"])
    async with processes(env) as servers:
        await servers.serve("--workers", "2")
        await wait_workers(port, 2)
        url = f"ws://127.0.0.1:{port}/"
        clients = [Client(url, backoff=FAST) for _ in range(12)]
        try:
            subs = []
            for client in clients:
                await client.connect()
                subs.append(await client.subscribe("notes"))
            # Both workers hold subscribers (the kernel spread the sockets over them).
            seen: dict[int, int] = {}
            end = time.monotonic() + DEADLINE
            while set(seen) != {0, 1} or not all(seen.values()):
                info = await worker_info(port)
                seen[info["worker"]] = info["connections"]
                assert time.monotonic() < end, f"workers seen: {seen}"
            async with writer(env) as notes:
                await write(notes, 5, "w")
            for sub in subs:
                events = await read_until(sub, 5)
                assert [e.data["title"] for e in events] == [f"w{n}" for n in range(5)]
        finally:
            for client in clients:
                await client.close()


# -- server processes and writer processes on one broker -------------------------------------------
async def test_two_servers_and_a_writer_deliver_every_change_in_stream_order(
    app_env, shared_broker
):
    env = {**app_env, "S3DB_APP_BROKER": shared_broker}
    ports = [free_port(), free_port()]
    async with processes(env) as servers:
        for port in ports:
            await servers.serve(port=port)
        clients = [Client(f"ws://127.0.0.1:{port}/") for port in ports for _ in range(2)]
        try:
            subs = []
            for client in clients:
                await client.connect()
                subs.append(await client.subscribe("notes", filter={"roomId": "r1"}))
            await asyncio.gather(servers.run("write", "20", "a"), servers.run("write", "20", "b"))
            orders = []
            for sub in subs:
                events = await read_until(sub, 40)
                offsets = [e.offset for e in events]
                assert offsets == sorted(offsets) and len(set(offsets)) == 40
                orders.append([e.data["title"] for e in events])
            assert all(order == orders[0] for order in orders)  # one stream order for all
            assert sorted(orders[0]) == sorted(
                [f"a{n}" for n in range(20)] + [f"b{n}" for n in range(20)]
            )
        finally:
            for client in clients:
                await client.close()


async def test_racing_writers_never_make_a_subscriber_see_an_older_version(app_env, shared_broker):
    env = {**app_env, "S3DB_APP_BROKER": shared_broker}
    async with processes(env) as servers:
        await servers.serve()
        url = f"ws://127.0.0.1:{env['S3DB_APP_PORT']}/"
        async with Client(url) as client:
            record = await client.insert("notes", {"title": "raced", "n": 0})
            sub = await client.subscribe("notes")
            await asyncio.gather(
                servers.run("race", record["id"], "25"), servers.run("race", record["id"], "25")
            )
            final = await client.get("notes", record["id"])
            assert final["n"] == 50
            versions = []
            async with asyncio.timeout(DEADLINE):
                while not versions or versions[-1] < 51:
                    versions.append((await sub.__anext__()).version)
            assert versions == sorted(versions) and len(set(versions)) == len(versions)


# -- kill -9 and resume ----------------------------------------------------------------------------
async def test_a_subscriber_resumes_after_its_server_is_killed(app_env, shared_broker):
    env = {**app_env, "S3DB_APP_BROKER": shared_broker}
    port = int(env["S3DB_APP_PORT"])
    async with processes(env) as servers:
        server = await servers.serve()
        async with (
            Client(f"ws://127.0.0.1:{port}/", backoff=FAST) as client,
            writer(env) as notes,
        ):
            sub = await client.subscribe("notes", filter={"roomId": "r1"})
            await write(notes, 3, "before-")
            assert [e.data["title"] for e in await read_until(sub, 3)] == [
                "before-0", "before-1", "before-2",
            ]  # fmt: skip
            server.kill()  # SIGKILL: no 1001, no goodbye
            await server.wait()
            await write(notes, 4, "missed-")
            await servers.serve()  # the same port
            await write(notes, 2, "after-")
            events = await read_until(sub, 6)
            assert [e.data["title"] for e in events] == [
                "missed-0", "missed-1", "missed-2", "missed-3", "after-0", "after-1",
            ]  # fmt: skip
            assert sub.recovered is True
            with pytest.raises(TimeoutError):
                await sub.next(timeout=0.3)


async def test_a_subscriber_whose_history_was_lost_is_told_to_reload(app_env):
    env = {**app_env, "S3DB_APP_BROKER": "local"}  # a new process: a new epoch, no history
    port = int(env["S3DB_APP_PORT"])
    async with processes(env) as servers:
        server = await servers.serve()
        async with Client(f"ws://127.0.0.1:{port}/", backoff=FAST) as client:
            sub = await client.subscribe("notes")
            await client.insert("notes", {"title": "before"})
            assert (await sub.next(timeout=DEADLINE)).data["title"] == "before"
            server.kill()
            await server.wait()
            await servers.serve()
            reload = await sub.next(timeout=DEADLINE)
            assert reload.is_reload and sub.recovered is False
            await client.insert("notes", {"title": "after"})
            assert (await sub.next(timeout=DEADLINE)).data["title"] == "after"


# -- the chat example as its README runs it ---------------------------------------------------------
async def test_chat_example_two_servers_and_an_announce_script_on_one_broker(
    tmp_path, shared_broker
):
    from examples.common import make_token

    root = TESTS.parent
    secret = "scale-out-test-secret-long-enough"
    store = f"file://{tmp_path / 'chat'}"
    env = {**os.environ, "JWT_SECRET": secret, "PYTHONPATH": str(root)}
    ports = [free_port(), free_port()]
    procs = []
    try:
        for port in ports:  # one after the other: the first creates the lobby room
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "examples.chat", "--port", str(port), "--db", store,
                "--broker", shared_broker, cwd=root, env=env,
                stdout=asyncio.subprocess.DEVNULL, stderr=(tmp_path / f"{port}.log").open("wb"),
            )  # fmt: skip
            procs.append(proc)
            await wait_health(port, proc, tmp_path / f"{port}.log")
        token = make_token(secret, "alice", name="alice")
        async with (
            Client(f"ws://127.0.0.1:{ports[0]}/?token={token}") as one,
            Client(f"ws://127.0.0.1:{ports[1]}/?token={token}") as two,
        ):
            rooms = (await one.list("chat_rooms")).items
            assert [r["name"] for r in rooms] == ["general"]
            room = rooms[0]["id"]
            subs = [await c.subscribe("chat_messages", filter={"roomId": room}) for c in (one, two)]
            await one.insert("chat_messages", {"roomId": room, "content": "hi from 3001"})
            script = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "examples.chat.announce", "--db", store,
                "--broker", shared_broker, "--room", "general", "Maintenance at 6 pm",
                cwd=root, env=env, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            async with asyncio.timeout(DEADLINE):
                _, err = await script.communicate()
            assert script.returncode == 0, err.decode()[-2000:]
            for sub in subs:
                got = [(e.data["type"], e.data["content"]) for e in await read_until(sub, 2)]
                assert got == [("text", "hi from 3001"), ("system", "Maintenance at 6 pm")]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                async with asyncio.timeout(15):
                    await proc.communicate()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def wait_health(port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
    end = time.monotonic() + DEADLINE
    while True:
        if proc.returncode is not None:
            err = log.read_text()[-2000:]
            raise AssertionError(f"the server exited with {proc.returncode}: {err}")
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/health") as response:
                    if response.status == 200:
                        return
        except (aiohttp.ClientError, OSError):
            pass
        if time.monotonic() > end:
            raise AssertionError(f"nothing listens on {port}")
        await asyncio.sleep(0.05)


async def test_tail_resumes_after_its_server_is_killed(app_env, shared_broker):
    env = {**app_env, "S3DB_APP_BROKER": shared_broker}
    port = int(env["S3DB_APP_PORT"])
    async with processes(env) as servers, writer(env) as notes:
        server = await servers.serve()
        tail = await asyncio.create_subprocess_exec(
            S3DB, "--log-format", "json", "tail", f"ws://127.0.0.1:{port}/", "--resource", "notes",
            cwd=TESTS, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:

            async def lines(count: int) -> list[dict[str, Any]]:
                async with asyncio.timeout(DEADLINE):
                    return [json.loads(await tail.stdout.readline()) for _ in range(count)]

            # tail prints nothing until subscribed: write until its first line shows up
            first = asyncio.ensure_future(lines(1))
            n = 0
            while not first.done():
                await notes.insert({"title": f"warmup-{n}"})
                n += 1
                await asyncio.wait({first}, timeout=0.2)
            seen = first.result()[0]["offset"]
            server.kill()
            await server.wait()
            await write(notes, 3, "missed-")
            await servers.serve()
            await write(notes, 1, "after-")
            got = await lines((n - seen) + 4)  # the warmups after the first line, then ours
            titles = [line["data"]["title"] for line in got]
            assert titles[-4:] == ["missed-0", "missed-1", "missed-2", "after-0"]
            offsets = [line["offset"] for line in got]
            assert offsets == list(range(seen + 1, seen + 1 + len(got)))  # nothing twice
        finally:
            tail.send_signal(signal.SIGINT)
            async with asyncio.timeout(15):
                await tail.wait()


@pytest.mark.parametrize(
    "name", ["chat", "collab", "dashboard", "iot", "leaderboard", "multitenant", "notifications"]
)
async def test_every_example_takes_broker(name, redis_url, monkeypatch):
    """``--broker URL`` reaches the example's Database (every example starts through one
    ``start_app``)."""
    import importlib

    from examples.common import parse_options
    from s3db_core.brokers.redis import RedisBroker

    monkeypatch.setenv("JWT_SECRET", "a-secret-for-the-examples-long-enough")
    app = importlib.import_module(f"examples.{name}.app")
    url = f"{redis_url}?prefix=ex{uuid.uuid4().hex[:10]}"
    options = parse_options(name, ["--broker", url, "--port", "0", "--db", "memory://"])
    assert options.broker == url
    created = await app.create_app(options)
    db = created[0]
    try:
        assert isinstance(db.broker, RedisBroker)
    finally:
        await db.disconnect()
