"""``make run EXAMPLE=...`` starts an example with the venv's Python, from a shell that has not
activated the venv (as the README says)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("secret", ["make-run-secret", None], ids=["JWT_SECRET", "dev"])
def test_make_run_starts_the_named_example(secret: str | None) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    venv = str(Path(sys.executable).parent.parent)
    # A fresh shell: no venv on PATH, no VIRTUAL_ENV.
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not p.startswith(venv))
    env = {**os.environ, "PATH": path, "JWT_SECRET": secret or ""}
    env.pop("VIRTUAL_ENV", None)
    if secret is None:  # make run adds --dev
        env.pop("JWT_SECRET")
    proc = subprocess.Popen(
        # -o: the venv exists already; do not let make reinstall it from here.
        ["make", "-s", "-o", "venv", "run", "EXAMPLE=chat", f"ARGS=--port {port}", f"VENV={venv}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while not any("running on" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stdout.readline())
        assert any(f"ws://127.0.0.1:{port}/" in line for line in lines), "".join(lines)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
        proc.stdout.close()
