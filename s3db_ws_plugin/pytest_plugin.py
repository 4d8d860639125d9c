"""pytest plugin (entry point ``pytest11: s3db``): fixtures for testing your own s3db apps.

    async def test_my_guard(s3db_database, s3db_token):
        await s3db_database.create_resource("notes", {"title": "string"})
        token = s3db_token(sub="alice", role="admin")

Fixtures are async and need pytest-asyncio (``asyncio_mode = "auto"`` or ``@pytest.mark.asyncio``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import pytest_asyncio

from s3db_core import Database

DEFAULT_TEST_SECRET = "s3db-test-secret"


@pytest.fixture
def s3db_jwt_secret() -> str:
    """The HS256 secret ``s3db_token`` signs with; override it to use your own."""
    return DEFAULT_TEST_SECRET


@pytest.fixture
def s3db_token(s3db_jwt_secret: str) -> Callable[..., str]:
    """A JWT factory: ``s3db_token(sub="alice", role="admin", ttl=3600, tenantId="t1")``."""

    def make(sub: str = "user-1", *, ttl: float = 3600, **claims: Any) -> str:
        now = int(time.time())
        payload = {"sub": sub, "iat": now, "exp": now + ttl, **claims}
        return jwt.encode(payload, s3db_jwt_secret, algorithm="HS256")

    return make


@pytest_asyncio.fixture
async def s3db_database():
    """A connected Database on a private ``memory://`` store, disconnected after the test."""
    db = Database(f"memory://pytest-{uuid.uuid4().hex}")
    await db.connect()
    yield db
    await db.disconnect()
