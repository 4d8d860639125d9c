"""``s3db serve app:factory --workers N``: N server processes on one port.

The parent starts N copies of ``s3db serve app:factory`` (each its own process, its own
Database, its own WebSocket plugin) with ``S3DB_WORKERS=N`` in their environment. A plugin that
sees it binds its port with ``SO_REUSEPORT`` (the kernel spreads new connections over the
processes) and refuses to start unless its Database's broker is shared (``redis://``,
``nats://``): with the in-process ``local`` broker a change written through one worker would
never reach the subscribers of the others. Each worker reports on a pipe once it listens.

The parent starts worker 0 first and stops there if it fails (its one-line startup error is
the whole answer), then the others; it restarts a worker that dies, and on SIGINT/SIGTERM
(also while a worker is still starting) stops them all: each gets SIGTERM and closes its
sockets with 1001 (clients reconnect elsewhere and resume); one still running ``STOP_TIMEOUT``
seconds later is killed.

Workers never outlive the parent, however it ends (SIGKILL and crashes included): the parent
holds the write end of a pipe whose read end every worker inherits (``S3DB_SUPERVISOR_FD``) and
never writes to it. The kernel closes it when the parent dies, and a thread in each worker,
blocked reading, sees end-of-file: the worker stops as on SIGTERM and, if it has not exited
``STOP_TIMEOUT`` seconds later (an event loop that does not answer), exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from s3db_core.log import get_logger

log = get_logger("s3db.cli")

WORKERS_ENV = "S3DB_WORKERS"
INDEX_ENV = "S3DB_WORKER_INDEX"
READY_ENV = "S3DB_READY_FD"
SUPERVISOR_ENV = "S3DB_SUPERVISOR_FD"
MAX_WORKERS = 256
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
# A worker that dies this soon after starting, this many times in a row, is not restarted.
CRASH_WINDOW = 5.0
MAX_QUICK_CRASHES = 3


class WorkerSettings:
    """What a process started by ``--workers`` learns from its environment."""

    def __init__(self, count: int, index: int, ready_fd: int | None) -> None:
        self.count = count
        self.index = index
        self.ready_fd = ready_fd

    @classmethod
    def from_env(cls) -> WorkerSettings | None:
        raw = os.environ.get(WORKERS_ENV)
        if not raw:
            return None
        try:
            count = int(raw)
            index = int(os.environ.get(INDEX_ENV, "0"))
            fd = os.environ.get(READY_ENV)
            ready_fd = int(fd) if fd else None
        except ValueError:
            return None
        return cls(count, index, ready_fd) if count > 1 else None

    def check_broker(self, db: Any) -> None:
        """Refuse the in-process broker: the workers would not see each other's changes."""
        if not shared_broker(db):
            raise RuntimeError(
                "--workers needs a shared broker: start the Database with "
                'broker="redis://HOST:6379/0" or "nats://HOST:4222" (the local broker keeps '
                "changes inside one process)"
            )

    def ready(self, url: str) -> None:
        """Tell the parent this worker listens (once)."""
        fd, self.ready_fd = self.ready_fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(fd, f"{url}\n".encode())
            os.close(fd)


def watch_supervisor(stop: asyncio.Event, grace: float = STOP_TIMEOUT) -> bool:
    """In a worker: set ``stop`` when the supervisor dies, and exit ``grace`` seconds later if
    the process is still there. False when this process is no supervisor's worker."""
    raw = os.environ.get(SUPERVISOR_ENV)
    if not raw or not os.environ.get(WORKERS_ENV):
        return False
    try:
        fd = int(raw)
        os.fstat(fd)
    except (ValueError, OSError):
        log.warning("supervisor pipe unusable; this worker will not notice its supervisor dying")
        return False
    loop = asyncio.get_running_loop()

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 64):  # the supervisor never writes: this returns b"" once it died
                pass
        log.warning("supervisor gone; stopping", pid=os.getpid(), within_seconds=grace)
        with contextlib.suppress(RuntimeError):  # the loop already closed: we are exiting
            loop.call_soon_threadsafe(stop.set)
        time.sleep(grace)
        log.error("worker did not stop in time after its supervisor died; exiting now")
        os._exit(1)

    threading.Thread(target=watch, name="s3db-supervisor-watch", daemon=True).start()
    return True


def shared_broker(db: Any) -> bool:
    from s3db_core.brokers.local import LocalBroker

    return not isinstance(getattr(db, "broker", None), LocalBroker)


class Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.quick_crashes = 0


class Supervision:
    """What every worker start needs: the command, the count, the stop request and the read
    end of the pipe whose write end only this process holds (its death closes it)."""

    def __init__(self, command: Sequence[str], count: int, stop: asyncio.Event) -> None:
        self.command = command
        self.count = count
        self.stop = stop
        self.alive_read, self.alive_write = os.pipe()  # neither is inherited unless passed

    def close(self) -> None:
        for fd in (self.alive_read, self.alive_write):
            with contextlib.suppress(OSError):
                os.close(fd)


async def _start(worker: Worker, run: Supervision) -> str | None:
    """Start ``worker`` and wait until it listens; its URL, or None if it exited first or a
    stop was requested meanwhile."""
    read_fd, write_fd = os.pipe()
    env = {**os.environ, WORKERS_ENV: str(run.count), INDEX_ENV: str(worker.index)}
    env[READY_ENV] = str(write_fd)
    env[SUPERVISOR_ENV] = str(run.alive_read)
    try:
        worker.proc = await asyncio.create_subprocess_exec(
            *run.command, env=env, pass_fds=(write_fd, run.alive_read)
        )
    finally:
        os.close(write_fd)
    worker.started = time.monotonic()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb")
    )
    try:
        line = asyncio.ensure_future(reader.readline())
        exited = asyncio.ensure_future(worker.proc.wait())
        stopping = asyncio.ensure_future(run.stop.wait())
        done, _ = await asyncio.wait(
            {line, exited, stopping}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        stopping.cancel()
        if line in done and line.result():
            exited.cancel()
            return line.result().decode().strip()
        line.cancel()
        if run.stop.is_set():  # the caller stops every worker, this one included
            exited.cancel()
            return None
        if exited not in done:  # neither listening nor dead: give up on it
            worker.proc.kill()
        exited.cancel()
        await worker.proc.wait()
        return None
    finally:
        transport.close()


async def _stop(workers: list[Worker]) -> None:
    procs = [w.proc for w in workers if w.proc is not None and w.proc.returncode is None]
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    if not procs:
        return
    _, pending = await asyncio.wait(
        [asyncio.ensure_future(p.wait()) for p in procs], timeout=STOP_TIMEOUT
    )
    for proc in procs:
        if proc.returncode is None:
            log.warning("worker did not stop in time; killing it", pid=proc.pid,
                        after_seconds=STOP_TIMEOUT)  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    for task in pending:
        await task


async def run_workers(target: str, count: int, options: Sequence[str] = ()) -> int:
    """Run ``count`` worker processes serving ``target``; returns the exit status."""
    command = [sys.executable, "-m", "s3db_ws_plugin.cli", *options, "serve", target]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    workers = [Worker(i) for i in range(count)]
    run = Supervision(command, count, stop)
    try:
        for worker in workers:
            url = await _start(worker, run)
            if stop.is_set():
                log.info("stopping workers", workers=count)
                return 0
            if url is None:
                assert worker.proc is not None
                # The worker said why in one line; the others are stopped.
                return worker.proc.returncode or 1
        log.info("workers serving", target=target, workers=count, url=url)
        return await _supervise(workers, run)
    finally:
        await _stop(workers)
        run.close()


async def _supervise(workers: list[Worker], run: Supervision) -> int:
    stop, count = run.stop, run.count
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            waits = {asyncio.ensure_future(w.proc.wait()): w for w in workers if w.proc is not None}
            done, _ = await asyncio.wait({stopping, *waits}, return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                if task not in done:
                    task.cancel()
            if stopping in done:
                log.info("stopping workers", workers=count)
                return 0
            for task in done:
                worker = waits[task]
                code = task.result()
                quick = time.monotonic() - worker.started < CRASH_WINDOW
                worker.quick_crashes = worker.quick_crashes + 1 if quick else 0
                log.warning("worker exited", worker=worker.index, code=code)
                if worker.quick_crashes >= MAX_QUICK_CRASHES:
                    log.error("worker keeps crashing; stopping", worker=worker.index)
                    return 1
                if await _start(worker, run) is None:
                    if stop.is_set():
                        log.info("stopping workers", workers=count)
                        return 0
                    log.error("worker failed to restart; stopping", worker=worker.index)
                    return 1
                log.info("worker restarted", worker=worker.index)
    finally:
        stopping.cancel()
