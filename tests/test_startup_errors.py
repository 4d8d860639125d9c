"""Startup failures of ``s3db serve`` and ``python -m examples.X``, run as a user runs them: one
short line on stderr that says what is wrong and how to fix it, a non-zero status, no traceback
(``--debug`` shows it) and no secret."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
S3DB = str(Path(sys.executable).parent / "s3db")
SECRET = "Sup3rSecretValue"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=ROOT,
        env={**os.environ, "JWT_SECRET": "test-secret", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_json_line(done: subprocess.CompletedProcess[str]) -> dict:
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert len(lines[0]) < 600 and "Traceback" not in done.stderr
    assert done.stdout == ""
    record = json.loads(lines[0])
    assert record["level"] == "error" and record["hint"]
    return record


def test_serve_port_in_use(busy_port: int) -> None:
    done = run(S3DB, "serve", "tests.startup_app:make_db", env={"S3DB_APP_PORT": str(busy_port)})
    assert done.returncode == 1
    record = one_json_line(done)
    assert record["error"] == f"cannot listen on 127.0.0.1:{busy_port}: the port is already in use"
    assert "another port" in record["hint"]


def test_serve_port_in_use_console_and_debug(busy_port: int) -> None:
    env = {"S3DB_APP_PORT": str(busy_port)}
    done = run(S3DB, "--log-format", "console", "serve", "tests.startup_app:make_db", env=env)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and "already in use" in done.stderr
    assert "Traceback" not in done.stderr
    debug = run(S3DB, "--log-format", "console", "serve", "--debug", "tests.startup_app:make_db", env=env)
    assert debug.returncode == 1 and "already in use" in debug.stderr
    assert "Traceback" in debug.stderr


def test_serve_unreachable_s3_endpoint_hides_credentials(closed_port: int) -> None:
    store = f"http://AKIDEXAMPLE:{SECRET}@127.0.0.1:{closed_port}/bucket/prefix"
    done = run(S3DB, "serve", "tests.startup_app:make_db", env={"S3DB_APP_STORE": store})
    assert done.returncode == 1
    record = one_json_line(done)
    assert record["error"].startswith("cannot reach the store")
    assert f"127.0.0.1:{closed_port}" in record["error"]
    assert SECRET not in done.stderr and "AKIDEXAMPLE" not in done.stderr


def test_serve_unknown_scheme() -> None:
    store = f"ftp://user:{SECRET}@example.com/bucket"
    done = run(S3DB, "serve", "tests.startup_app:make_db", env={"S3DB_APP_STORE": store})
    assert done.returncode == 1
    record = one_json_line(done)
    assert "unknown storage scheme 'ftp'" in record["error"]
    assert "memory://" in record["hint"] and SECRET not in done.stderr
    # The hint's example is printed as written (placeholders are not secrets); the user's URL
    # stays redacted.
    assert "s3://KEY:SECRET@bucket/prefix" in record["hint"], record["hint"]
    assert "http(s)://KEY:SECRET@host:port/bucket/prefix" in record["hint"]
    assert "***" not in record["hint"]


def test_serve_unknown_scheme_console_hint_keeps_its_example() -> None:
    store = f"ftp://user:{SECRET}@example.com/bucket"
    env = {"S3DB_APP_STORE": store}
    done = run(S3DB, "--log-format", "console", "serve", "tests.startup_app:make_db", env=env)
    assert done.returncode == 1
    assert "s3://KEY:SECRET@bucket/prefix" in done.stderr and "***@bucket" not in done.stderr
    assert SECRET not in done.stderr


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("no_such_module:make_db", "cannot import the app: No module named 'no_such_module'"),
        ("tests.startup_app:nope", "module 'tests.startup_app' has no attribute 'nope'"),
        ("tests.startup_app", "expected the app as MODULE:ATTR, got 'tests.startup_app'"),
    ],
)
def test_serve_bad_app_path(target: str, error: str) -> None:
    done = run(S3DB, "serve", target)
    assert done.returncode == 2
    assert one_json_line(done)["error"] == error


def test_serve_a_database_without_plugin_says_nothing_would_listen() -> None:
    done = run(S3DB, "serve", "tests.startup_app:plain")
    assert done.returncode == 2
    record = one_json_line(done)
    assert record["error"] == "tests.startup_app:plain has no WebSocketPlugin: nothing would listen"
    assert "use_plugin(WebSocketPlugin" in record["hint"]


def test_example_port_in_use(busy_port: int) -> None:
    done = run(sys.executable, "-m", "examples.chat", "--port", str(busy_port))
    assert done.returncode == 1
    record = one_json_line(done)
    assert "already in use" in record["error"] and "--port" in record["hint"]


def test_example_unreachable_store_hides_credentials(closed_port: int) -> None:
    store = f"http://AKIDEXAMPLE:{SECRET}@127.0.0.1:{closed_port}/bucket"
    done = run(sys.executable, "-m", "examples.chat", "--port", "0", "--db", store)
    assert done.returncode == 1
    record = one_json_line(done)
    assert record["error"].startswith("cannot reach the store") and SECRET not in done.stderr
