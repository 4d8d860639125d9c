"""pytest plugin (entry point ``pytest11: s3db``): fixtures for testing your own s3db apps.

| fixture | what it is |
|---|---|
| ``s3db_database`` | a connected ``Database`` on a private ``memory://`` store |
| ``s3db_jwt_secret`` / ``s3db_token`` | the test HS256 secret and a JWT factory signing with it |
| ``s3db_plugin_config`` | ``WebSocketPlugin`` keyword arguments; override it with your app's |
| ``s3db_plugin_factory`` | ``await start(db, **config)``: a plugin on a free loopback port |
| ``s3db_server`` | a running plugin over ``s3db_database`` configured by ``s3db_plugin_config`` |
| ``s3db_connect`` | ``await s3db_connect(token=..., api_key=...)``: a ``Client`` of ``s3db_server`` |
| ``s3db_client_factory`` | ``await connect(plugin, token=...)``: a ``Client`` of any plugin |
| ``s3db_client`` | a ``Client`` connected with ``s3db_token()`` (user ``user-1``, role ``user``) |

    @pytest.fixture
    def s3db_plugin_config():
        return {"resources": {"notes": {"guard": {"get": owner_only}}}}

    async def test_only_the_owner_reads(s3db_database, s3db_server, s3db_connect, s3db_token):
        ...

When the config has no ``auth``, the server accepts anonymous clients and ``s3db_token``
tokens (jwt driver with ``s3db_jwt_secret``); without ``resources`` it exposes every resource
the database has when the server starts. Every server and client is closed after the test.
The async fixtures need pytest-asyncio (``asyncio_mode = "auto"`` or ``@pytest.mark.asyncio``).
pytest loads this plugin in every session of an environment where s3db is installed, so it
imports nothing beyond pytest at load time: without pytest-asyncio the sync fixtures still work
and an async one fails the test that asks for it, saying what to install.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

if TYPE_CHECKING:  # imported lazily: pytest loads this plugin in every session
    from s3db_core import Database

    from .client import Client
    from .plugin import WebSocketPlugin

DEFAULT_TEST_SECRET = "s3db-test-secret-never-use-in-production"
NEEDS_PYTEST_ASYNCIO = (
    "the s3db fixture {name!r} is async and needs pytest-asyncio: "
    'pip install pytest-asyncio, and set asyncio_mode = "auto" in your pytest configuration'
)

F = TypeVar("F", bound=Callable[..., Any])


def _async_fixture(func: F) -> F:
    """``pytest_asyncio.fixture`` when pytest-asyncio is installed; otherwise a fixture of the
    same name that fails the test using it with what to install."""
    try:
        import pytest_asyncio
    except ImportError:
        name = func.__name__

        def unavailable() -> None:
            pytest.fail(NEEDS_PYTEST_ASYNCIO.format(name=name), pytrace=False)

        unavailable.__doc__ = func.__doc__
        return cast(F, pytest.fixture(name=name)(unavailable))
    return cast(F, pytest_asyncio.fixture(func))


@pytest.fixture
def s3db_jwt_secret() -> str:
    """The HS256 secret ``s3db_token`` signs with; override it to use your own."""
    return DEFAULT_TEST_SECRET


@pytest.fixture
def s3db_token(s3db_jwt_secret: str) -> Callable[..., str]:
    """A JWT factory: ``s3db_token(sub="alice", role="admin", ttl=3600, tenantId="t1")``."""

    import jwt

    def make(sub: str = "user-1", *, ttl: float = 3600, **claims: Any) -> str:
        now = time.time()  # exp to the sub-second: a 1.5 s token lives 1.5 s
        payload = {"sub": sub, "iat": int(now), "exp": now + ttl, **claims}
        return jwt.encode(payload, s3db_jwt_secret, algorithm="HS256")

    return make


@_async_fixture
async def s3db_database() -> AsyncIterator[Database]:
    """A connected Database on a private ``memory://`` store, disconnected after the test."""
    from s3db_core import Database

    db = Database(f"memory://pytest-{uuid.uuid4().hex}")
    await db.connect()
    yield db
    await db.disconnect()


@pytest.fixture
def s3db_plugin_config() -> dict[str, Any]:
    """``WebSocketPlugin`` keyword arguments for ``s3db_server``; override it in your tests.

    Missing ``auth``: anonymous clients and ``s3db_token`` tokens are accepted. Missing
    ``resources``: every resource of the database is exposed as ``True``.
    """
    return {}


@_async_fixture
async def s3db_plugin_factory(s3db_jwt_secret: str):
    """``plugin = await start(db, **config)``: a started ``WebSocketPlugin`` on a free port of
    127.0.0.1 (``plugin.url``), with the same defaults as ``s3db_plugin_config``."""
    from .plugin import WebSocketPlugin

    started: list[WebSocketPlugin] = []

    async def start(db: Database, **config: Any) -> WebSocketPlugin:
        config.setdefault(
            "auth",
            {
                "required": False,
                "drivers": [{"driver": "jwt", "config": {"secret": s3db_jwt_secret}}],
            },
        )
        config.setdefault("resources", {name: True for name in db.resources})
        config.setdefault("port", 0)
        config.setdefault("host", "127.0.0.1")
        plugin = WebSocketPlugin(**config)
        if not db.connected:
            await db.connect()
        await db.use_plugin(plugin)
        started.append(plugin)
        return plugin

    yield start
    for plugin in reversed(started):
        await plugin.stop()


@_async_fixture
async def s3db_server(
    s3db_database: Database,
    s3db_plugin_config: dict[str, Any],
    s3db_plugin_factory: Callable[..., Awaitable[WebSocketPlugin]],
) -> WebSocketPlugin:
    """A running ``WebSocketPlugin`` over ``s3db_database``, configured by
    ``s3db_plugin_config``; ``s3db_server.url`` is its ``ws://`` address."""
    return await s3db_plugin_factory(s3db_database, **s3db_plugin_config)


@_async_fixture
async def s3db_client_factory(s3db_plugin_factory: Callable[..., Awaitable[WebSocketPlugin]]):
    """``client = await connect(plugin, token=..., api_key=..., url=..., **client_options)``: a
    ``Client`` connected to any running plugin (e.g. one from ``s3db_plugin_factory`` with a
    config of the test's own; ``url`` overrides ``plugin.url``), with fast reconnects and a 5 s
    request timeout, closed after the test (before the plugins stop)."""
    from .client import Backoff, Client

    clients: list[Client] = []

    async def connect(
        plugin: WebSocketPlugin, token: Any = None, *, url: str | None = None, **options: Any
    ) -> Client:
        options.setdefault("backoff", Backoff(initial=0.05, maximum=0.5))
        options.setdefault("request_timeout", 5.0)
        client = Client(url or plugin.url, token=token, **options)
        clients.append(client)
        await client.connect()
        return client

    yield connect
    for client in reversed(clients):
        await client.close()


@_async_fixture
async def s3db_connect(
    s3db_server: WebSocketPlugin, s3db_client_factory: Callable[..., Awaitable[Client]]
):
    """``client = await s3db_connect(token=..., api_key=..., **client_options)``: a ``Client``
    connected to ``s3db_server``, closed after the test."""

    async def connect(token: Any = None, **options: Any) -> Client:
        return await s3db_client_factory(s3db_server, token, **options)

    return connect


@_async_fixture
async def s3db_client(
    s3db_connect: Callable[..., Awaitable[Client]], s3db_token: Callable[..., str]
) -> Client:
    """A ``Client`` connected to ``s3db_server`` as ``user-1`` (role ``user``)."""
    return await s3db_connect(token=s3db_token())
