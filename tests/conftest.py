"""Shared fixtures: a real S3 server (SeaweedFS) per session and per-backend storage URLs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from s3server import S3Server, start_s3_server

from s3db_core import Database


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A running S3 server with one bucket for the session (``S3DB_TEST_S3_URL`` if set).

    Attributes ``endpoint``, ``bucket``, ``access``, ``secret``; ``url(prefix)`` gives
    ``http://testkey:testsecret@127.0.0.1:PORT/BUCKET/PREFIX``. Give each test its own prefix.
    """
    external = os.environ.get("S3DB_TEST_S3_URL")
    if external:
        yield S3Server.from_url(external)
        return
    server = start_s3_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["memory", "file", "s3"])
def storage_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh, empty store's connection string for each backend (S3 started only if needed)."""
    unique = uuid.uuid4().hex[:12]
    if request.param == "memory":
        return f"memory://test-{unique}"
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    server: S3Server = request.getfixturevalue("s3_server")
    return server.url(f"test-{unique}")


@pytest.fixture(params=["memory", "s3"])
def ws_store_url(request: pytest.FixtureRequest) -> str:
    """memory:// and the real S3 server, for the WebSocket plugin's representative tests."""
    unique = uuid.uuid4().hex[:12]
    if request.param == "memory":
        return f"memory://ws-{unique}"
    return request.getfixturevalue("s3_server").url(f"ws-{unique}")


@pytest.fixture
async def ws_database(request: pytest.FixtureRequest):
    """A connected ``Database`` for the client-based plugin tests, disconnected after the test:
    on ``ws_store_url`` (memory:// and the real S3 server) when the test asks for that fixture,
    else on a private memory:// store. Modules build their ``s3db_database`` on it."""
    if "ws_store_url" in request.fixturenames:
        url = request.getfixturevalue("ws_store_url")
    else:
        url = f"memory://ws-{uuid.uuid4().hex[:12]}"
    db = Database(url)
    await db.connect()
    yield db
    await db.disconnect()


@pytest.fixture
async def connect_client(s3db_plugin_factory):  # set up after it: closed before plugins stop
    """``client = await connect_client(plugin, token=..., api_key=..., **options)``: a connected
    ``s3db_ws_plugin.client.Client`` for any running plugin (``url=`` overrides ``plugin.url``,
    e.g. to add a query string), closed after the test.

    The pytest plugin's ``s3db_connect`` only reaches ``s3db_server``; tests that start a plugin
    per test (``s3db_plugin_factory``, to vary the guards or the auth config) connect with this.
    """
    from s3db_ws_plugin.client import Backoff, Client

    clients: list[Client] = []

    async def connect(plugin, token=None, *, url: str | None = None, **options) -> Client:
        options.setdefault("backoff", Backoff(initial=0.05, maximum=0.5))
        client = Client(url or plugin.url, token=token, **options)
        clients.append(client)
        await client.connect()
        return client

    yield connect
    for client in reversed(clients):
        await client.close()
