"""Behind a reverse proxy every socket comes from the proxy's address. With ``trusted_proxies``
the address the proxy forwards is the client's: two users behind a real nginx count as two
addresses for the per-address caps, the rate limit and the logs, while a forwarding header
from anyone but a trusted proxy changes nothing.

Clients pick their own loopback source address (127.0.0.2, 127.0.0.3...: Linux routes all of
127/8 to lo), so each "user" has an address of its own, as on a network.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import structlog
import websockets
from websockets.exceptions import InvalidStatus
from ws_helpers import serve

from s3db_ws_plugin.connection import TrustedProxies

ROOT = Path(__file__).resolve().parent.parent
S3DB = str(Path(sys.executable).parent / "s3db")
TIMEOUT = 10.0
NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:  # never skipped: a missing binary fails loudly
        raise RuntimeError("nginx not found: run `make services` (it installs Debian's nginx)")
    return found


@asynccontextmanager
async def nginx(upstream: int) -> AsyncIterator[str]:
    """A real nginx on a free loopback port proxying WebSockets to ``upstream`` as a typical
    deployment does (X-Forwarded-For appended); yields its ws:// URL."""
    workdir = Path(tempfile.mkdtemp(prefix="s3db-nginx-"))
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, port=port, upstream=upstream))
    proc = subprocess.Popen(
        [nginx_binary(), "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start listening") from None
                await asyncio.sleep(0.05)
        yield f"ws://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
        shutil.rmtree(workdir, ignore_errors=True)


@asynccontextmanager
async def user(url: str, source: str, **headers: str) -> AsyncIterator[websockets.ClientConnection]:
    """A socket from the loopback address ``source`` (a user of its own), sending ``headers``."""
    async with websockets.connect(
        url, local_addr=(source, 0), additional_headers=headers, open_timeout=TIMEOUT
    ) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "connected"
        yield ws


async def refused(url: str, source: str, **headers: str) -> int:
    with pytest.raises(InvalidStatus) as caught:
        async with user(url, source, **headers):
            pass
    return caught.value.response.status_code


async def ping(ws: websockets.ClientConnection) -> str:
    await ws.send(json.dumps({"type": "ping", "requestId": "p"}))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if frame.get("requestId") == "p":
            return frame["type"] if frame["type"] != "error" else frame["code"]


async def test_two_users_behind_nginx_are_two_addresses_and_a_spoofed_header_changes_nothing():
    async with serve(resources={}, max_connections_per_ip=1, trusted_proxies=["127.0.0.1"]) as (
        _,
        plugin,
    ):
        async with nginx(plugin.port) as proxy:
            with structlog.testing.capture_logs() as logs:
                async with user(proxy, "127.0.0.2") as ann, user(proxy, "127.0.0.3") as bob:
                    # Each is capped on its own address: a second socket of ann's is refused.
                    assert await refused(proxy, "127.0.0.2") == 429
                    # Naming someone else in the header does not escape the cap: nginx appends
                    # the real peer, and the rightmost untrusted hop is what counts.
                    assert await refused(proxy, "127.0.0.2", **{"X-Forwarded-For": "10.1.1.1"}) == 429
                    # A header sent straight to the server (an untrusted peer) is ignored: it
                    # neither frees the sender from its own cap nor frames someone else.
                    direct = plugin.url.replace("localhost", "127.0.0.1")
                    assert await refused(direct, "127.0.0.2", **{"X-Forwarded-For": "10.2.2.2"}) == 429
                    async with user(direct, "127.0.0.4", **{"X-Forwarded-For": "127.0.0.3"}) as eve:
                        assert await ping(eve) == "pong"
                    assert await ping(ann) == "pong" and await ping(bob) == "pong"
            opened = [e for e in logs if e["event"] == "connection opened"]
            assert sorted(e["remote"] for e in opened) == [
                "127.0.0.2",
                "127.0.0.3",
                "127.0.0.4",
            ], opened

            # Without the option, both users share the proxy's address: bob is refused.
            plugin.trusted_proxies = None
            async with user(proxy, "127.0.0.2"):
                assert await refused(proxy, "127.0.0.3") == 429


async def test_the_rate_limit_per_address_counts_each_user_behind_the_proxy():
    rate = {"max_requests": 3, "window_ms": 60_000, "key": "ip"}
    async with serve(resources={}, rate_limit=rate, trusted_proxies="127.0.0.1") as (_, plugin):
        async with nginx(plugin.port) as proxy:
            async with user(proxy, "127.0.0.2") as ann, user(proxy, "127.0.0.3") as bob:
                results = [await ping(ann) for _ in range(4)]
                assert results[-1] == "RATE_LIMITED", results
                assert await ping(bob) == "pong"  # ann's budget is not bob's


async def test_the_forwarded_header_and_a_chain_of_trusted_proxies():
    """RFC 7239 ``Forwarded`` when the proxies set it (``proxy_header``), and a chain of trusted
    hops: the rightmost address that is not a trusted proxy is the client; a hop the nearest
    proxy could not name leaves the last known one."""
    cases = [
        ("Forwarded", 'for="[2001:db8::7]:4711", for=198.51.100.9;proto=https', "198.51.100.9"),
        ("Forwarded", 'for="[2001:db8::7]:4711";by=x', "2001:db8::7"),
        ("X-Forwarded-For", "203.0.113.5, 10.0.0.7", "203.0.113.5"),
        ("X-Forwarded-For", "203.0.113.5:5000, 10.1.2.3, 10.0.0.7", "203.0.113.5"),
        ("X-Forwarded-For", "198.51.100.1, unknown, 10.0.0.7", "10.0.0.7"),
        ("X-Forwarded-For", "", "127.0.0.1"),
    ]
    for header, value, expected in cases:
        trusted = ["127.0.0.1", "10.0.0.0/8"]
        async with serve(resources={}, trusted_proxies=trusted, proxy_header=header) as (_, plugin):
            with structlog.testing.capture_logs() as logs:
                async with user(plugin.url, "127.0.0.1", **{header: value}) as ws:
                    assert await ping(ws) == "pong"
            opened = [e for e in logs if e["event"] == "connection opened"]
            assert [e["remote"] for e in opened] == [expected], (header, value, opened)
            # Only the configured header is read: the other one is the client's to invent.
            other = "Forwarded" if header == "X-Forwarded-For" else "X-Forwarded-For"
            with structlog.testing.capture_logs() as logs:
                spoof = "for=192.0.2.66" if other == "Forwarded" else "192.0.2.66"
                async with user(plugin.url, "127.0.0.1", **{other: spoof}) as ws:
                    assert await ping(ws) == "pong"
            opened = [e for e in logs if e["event"] == "connection opened"]
            assert [e["remote"] for e in opened] == ["127.0.0.1"], opened


@pytest.mark.parametrize("bad", [["10.0.0.300"], ["example.com"], "127.0.0.1,nope"])
def test_trusted_proxies_must_be_addresses_or_networks(bad):
    with pytest.raises(ValueError, match="trusted_proxies"):
        TrustedProxies(bad)
    with pytest.raises(ValueError, match="proxy_header"):
        TrustedProxies(["127.0.0.1"], "X-Real-IP")


@pytest.fixture
def app_env(s3db_jwt_secret) -> Iterator[dict[str, str]]:
    yield {
        **os.environ,
        "S3DB_APP_PORT": "0",
        "S3DB_APP_STORE": "memory://proxies",
        "S3DB_APP_SECRET": s3db_jwt_secret,
    }


def test_s3db_serve_refuses_a_bad_trusted_proxies_flag(app_env):
    done = subprocess.run(
        [S3DB, "serve", "tests.cli_app:make_db", "--trusted-proxies", "10.0.0.0/33"],
        cwd=ROOT,
        env=app_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "not an IP address or network" in done.stderr


async def test_s3db_serve_trusted_proxies_flag_behind_nginx(app_env, s3db_token):
    proc = await asyncio.create_subprocess_exec(
        S3DB, "--log-format", "json", "--log-level", "debug", "serve", "tests.cli_app:make_db",
        "--trusted-proxies", "127.0.0.1",
        cwd=ROOT, env=app_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:

        async def until(event: str) -> dict:
            async with asyncio.timeout(30):
                while line := await proc.stderr.readline():  # type: ignore[union-attr]
                    record = json.loads(line)
                    if record["event"] == event:
                        return record
            raise AssertionError(f"{event!r} never logged")

        port = int((await until("listening"))["websocket"].rsplit(":", 1)[1].split("/")[0])
        async with nginx(port) as proxy:
            bearer = {"Authorization": f"Bearer {s3db_token()}"}
            async with user(proxy, "127.0.0.5", **bearer) as ws:
                assert await ping(ws) == "pong"
                opened = await until("connection opened")
                assert opened["remote"] == "127.0.0.5" and opened["peer"] == "127.0.0.1"
    finally:
        proc.terminate()
        async with asyncio.timeout(30):
            await proc.communicate()


def test_the_examples_pass_trusted_proxies_to_their_plugin():
    """``python -m examples.chat --trusted-proxies ...`` reaches the plugin: a wrong value is the
    plugin's own one-line error."""
    done = subprocess.run(
        [sys.executable, "-m", "examples.chat", "--dev", "--port", "0", "--trusted-proxies", "nope"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "JWT_SECRET"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "trusted_proxies: 'nope' is not an IP address or network" in done.stderr
