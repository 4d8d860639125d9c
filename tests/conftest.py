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
