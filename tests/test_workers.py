"""``s3db serve --workers N``: the workers never outlive their supervisor.

Real processes as an operator runs them: the supervisor started by the ``s3db`` command, its
workers found through ``/proc``, stopped with SIGTERM (the bound holds even when a worker does
not answer it) or killed with SIGKILL (the workers notice by themselves and exit). A worker is
gone when its pid no longer runs, and the port is free when nothing listens on it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import aiohttp
import pytest

from s3db_ws_plugin.client import Client
from s3db_ws_plugin.workers import STOP_TIMEOUT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

TESTS = Path(__file__).resolve().parent
S3DB = str(Path(sys.executable).parent / "s3db")
DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children(pid: int) -> set[int]:
    """The pids whose parent is ``pid``."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def started_at(pid: int) -> str | None:
    """The process's start time (clock ticks since boot): with the pid, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def kill_leftovers(procs: dict[int, str | None]) -> None:
    """SIGKILL what is left of the processes this test started (never a reused pid)."""
    for pid, start in procs.items():
        if start is not None and started_at(pid) == start:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its reaper runs nothing, holds no port)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def port_free(port: int) -> bool:
    """Nothing listens on ``port`` (a listener makes this bind fail; TIME_WAIT does not)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def app_env(tmp_path: Path, redis_url: str, port: int) -> dict[str, str]:
    """The scale-out test app's environment: a file store, its own prefix on Redis, the port."""
    return {
        **os.environ,
        "S3DB_APP_STORE": f"file://{tmp_path / 'store'}",
        "S3DB_APP_BROKER": f"{redis_url}?prefix=t{uuid.uuid4().hex[:12]}",
        "S3DB_APP_PORT": str(port),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }


async def worker_index(port: int) -> int:
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"http://127.0.0.1:{port}/worker") as response:
            return int((await response.json())["worker"])


async def until(check, what: str, deadline: float = DEADLINE) -> float:
    """Wait for ``check()``; the seconds it took."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


@asynccontextmanager
async def supervisor(
    tmp_path: Path, redis_url: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, set[int]]]:
    """``s3db serve --workers 2`` serving, with its port and its two workers' pids."""
    port = free_port()
    env = app_env(tmp_path, redis_url, port)
    proc = await asyncio.create_subprocess_exec(
        S3DB, "--log-format", "json", "--log-level", "info", "serve", "scaleout_app:make",
        "--workers", "2", cwd=TESTS, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    workers: set[int] = set()
    started: dict[int, str | None] = {}
    try:
        seen: set[int] = set()
        end = time.monotonic() + DEADLINE
        while seen != {0, 1}:  # both workers answer (the supervisor starts them in turn)
            assert proc.returncode is None, f"the supervisor exited with {proc.returncode}"
            assert time.monotonic() < end, f"workers answering: {seen}"
            try:
                seen.add(await worker_index(port))
            except (aiohttp.ClientError, OSError):
                await asyncio.sleep(0.05)
        workers = children(proc.pid)
        started.update({pid: started_at(pid) for pid in workers})
        assert len(workers) == 2 and all(running(pid) for pid in workers), workers
        yield proc, port, workers
    finally:  # whatever happened, leave nothing behind
        kill_leftovers(started)
        with suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def test_workers_exit_when_their_supervisor_is_killed(tmp_path, redis_url):
    async with supervisor(tmp_path, redis_url) as (proc, port, workers):
        client = Client(f"ws://127.0.0.1:{port}/", reconnect=False)
        await client.connect()
        try:
            await client.subscribe("notes")
            proc.kill()  # SIGKILL: the supervisor cannot tell anyone
            await proc.wait()
            took = await until(lambda: not any(map(running, workers)), "the workers to exit")
            assert took < STOP_TIMEOUT + 5
            assert port_free(port)
            # The worker closed its sockets on the way out (clients reconnect elsewhere).
            await until(lambda: not client.connected, "the client to be disconnected", 5)
        finally:
            await client.close()


async def test_sigterm_stops_every_worker_within_the_bound(tmp_path, redis_url):
    async with supervisor(tmp_path, redis_url) as (proc, port, workers):
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STOP_TIMEOUT + 5):
            assert await proc.wait() == 0
        assert not any(map(running, workers))
        assert port_free(port)


async def test_sigterm_stops_a_worker_that_does_not_answer_within_the_bound(tmp_path, redis_url):
    async with supervisor(tmp_path, redis_url) as (proc, port, workers):
        stuck = min(workers)
        os.kill(stuck, signal.SIGSTOP)  # it cannot act on SIGTERM
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STOP_TIMEOUT + 10):
            await proc.wait()
        assert time.monotonic() - started < STOP_TIMEOUT + 10
        await until(lambda: not any(map(running, workers)), "the workers to be gone", 5)
        assert port_free(port)


@asynccontextmanager
async def starting(
    tmp_path: Path, redis_url: str, blocks: bool = False
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, set[int]]]:
    """``s3db serve --workers 2`` whose first worker is still starting (its app takes a minute
    to start), with that worker's pid."""
    port = free_port()
    env = {**app_env(tmp_path, redis_url, port), "S3DB_APP_START_DELAY": "60"}
    env["S3DB_APP_START_BLOCKS"] = "1" if blocks else "0"
    proc = await asyncio.create_subprocess_exec(
        S3DB, "serve", "workers_app:make", "--workers", "2", cwd=TESTS, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    workers: set[int] = set()
    started: dict[int, str | None] = {}
    try:
        await until(lambda: bool(workers.update(children(proc.pid)) or workers), "a worker")
        started.update({pid: started_at(pid) for pid in workers})
        await asyncio.sleep(1.0)  # let it reach the app's start-up (nothing fails if it has not)
        yield proc, port, workers
    finally:
        kill_leftovers(started)
        with suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def test_workers_exit_when_their_supervisor_dies_while_they_start(tmp_path, redis_url):
    """A supervisor killed while its first worker is still starting leaves nothing running."""
    async with starting(tmp_path, redis_url) as (proc, port, workers):
        proc.kill()
        await proc.wait()
        took = await until(lambda: not any(map(running, workers)), "the workers to exit")
        assert took < STOP_TIMEOUT, "the worker stopped its start-up by itself"
        assert port_free(port)


async def test_sigterm_while_a_worker_starts_stops_at_once(tmp_path, redis_url):
    async with starting(tmp_path, redis_url) as (proc, port, workers):
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STOP_TIMEOUT + 10):
            assert await proc.wait() == 0
        assert time.monotonic() - started < STOP_TIMEOUT, "the worker stopped by itself"
        await until(lambda: not any(map(running, workers)), "the workers to be gone", 5)
        assert port_free(port)


async def test_a_worker_stuck_in_a_blocking_call_exits_within_the_bound(tmp_path, redis_url):
    """Its event loop cannot act on anything: the worker still exits ``STOP_TIMEOUT`` seconds
    after its supervisor died."""
    async with starting(tmp_path, redis_url, blocks=True) as (proc, port, workers):
        proc.kill()
        await proc.wait()
        took = await until(lambda: not any(map(running, workers)), "the workers to exit")
        assert took < STOP_TIMEOUT + 10
        assert port_free(port)
