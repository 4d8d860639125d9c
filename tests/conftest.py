"""Shared fixtures: real S3 (SeaweedFS), Redis and NATS servers per session, per-backend storage
URLs and per-engine broker URLs."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog
from s3server import S3Server, start_s3_server
from services import Service, start_nats, start_redis

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


@pytest.fixture
async def db(storage_url: str) -> AsyncIterator[Database]:
    """A connected Database on each storage client (``storage_url``), disconnected after."""
    database = Database(storage_url)
    await database.connect()
    yield database
    await database.disconnect()


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


@pytest.fixture(scope="session")
def redis_service() -> Iterator[Service]:
    """A real redis-server for the session (never skipped: a missing binary fails the test)."""
    service = start_redis()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def nats_service() -> Iterator[Service]:
    """A real ``nats-server -js`` for the session, its JetStream store in a temporary dir."""
    service = start_nats()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def redis_url(redis_service: Service) -> str:
    """``redis://127.0.0.1:PORT/0`` of the session's Redis (add ``?prefix=`` to isolate a test)."""
    return redis_service.url


@pytest.fixture(scope="session")
def nats_url(nats_service: Service) -> str:
    """``nats://127.0.0.1:PORT`` of the session's NATS (add ``?prefix=`` to isolate a test)."""
    return nats_service.url


@pytest.fixture(params=["redis", "nats"])
def shared_broker_url(request: pytest.FixtureRequest) -> str:
    """A broker that several processes share (the local one is one process's own by design)."""
    base = request.getfixturevalue(f"{request.param}_url")
    return f"{base}?prefix=t{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["local", "redis", "nats"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """A broker URL per engine, with a prefix of its own so tests never see each other's streams.
    Delivery and resume tests take it to run against every engine."""
    if request.param == "local":
        return "local"
    base = request.getfixturevalue(f"{request.param}_url")
    return f"{base}?prefix=t{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _structlog_configuration_restored() -> Iterator[None]:
    """A test that configures structlog in-process (a benchmark's quick run sets a WARNING
    filter) must not leave it behind: ``capture_logs`` in a later test saw nothing (five tests
    failed in one full run, none alone)."""
    saved = structlog.get_config()
    yield
    if structlog.get_config() != saved:
        structlog.configure(**saved)


@pytest.fixture(autouse=True)
def _examples_leave_process_logging_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """``examples.common.parse_options`` is an entry point's: it configures structlog (caching
    loggers on first use) and installs an excepthook for the whole process. Tests that call it
    in-process must not leave that behind for the tests after them (``capture_logs`` would see
    nothing); the examples' own logging is tested in subprocesses."""
    import examples.common as common

    monkeypatch.setattr(common, "configure_logging", lambda *args, **kwargs: None)
    monkeypatch.setattr(common, "report_startup_errors", lambda *args, **kwargs: None)
