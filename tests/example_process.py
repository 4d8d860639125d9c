"""Run ``python -m examples.<name>`` the way a user does, on a free loopback port, for a test."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def running_example(
    name: str, secret: str | None, *, ready: str = "running on", dev: bool = False
) -> AsyncIterator[tuple[str, list[str]]]:
    """Start the example with ``JWT_SECRET=secret`` (unset when None; ``--dev`` if ``dev``);
    yield its socket URL and the output lines read up to the line containing ``ready``. Stops
    it with SIGTERM and expects exit code 0."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "JWT_SECRET"}
    if secret is not None:
        env["JWT_SECRET"] = secret
    argv = [sys.executable, "-m", f"examples.{name}", "--port", str(port), "--db", f"memory://{name}-entry"]
    proc = subprocess.Popen(
        [*argv, "--dev"] if dev else argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not any(ready in line for line in lines):
            remaining = deadline - time.monotonic()
            assert remaining > 0 and proc.poll() is None, "".join(lines)
            lines.append(await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), remaining))
        yield f"ws://127.0.0.1:{port}/", lines
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == 0, "".join(lines)
