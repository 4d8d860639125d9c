"""What a client sees when a guard raises: s3db's typed errors keep their codes, anything else is
an INTERNAL_ERROR whose frame carries an error id and none of the exception's text."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from s3db_core import ForbiddenError, NotFoundError, ValidationError
from s3db_ws_plugin.client import Forbidden, InternalError, NotFound, ValidationFailed


def create_guard(user, data):
    title = data.get("title")
    if title == "forbidden":
        raise ForbiddenError("titles like that are not yours to write")
    if title == "hidden":
        raise NotFoundError("no such thing")
    if title == "invalid":
        raise ValidationError([{"field": "title", "rule": "custom", "message": "not that one"}])
    if title == "crash":
        raise RuntimeError("secret-bucket-name leaked from a stack trace")
    return True


@pytest.fixture
async def s3db_database(s3db_database):
    await s3db_database.create_resource("notes", {"title": "string|required"})
    return s3db_database


@pytest.fixture
def s3db_plugin_config():
    return {"resources": {"notes": {"guard": {"create": create_guard}}}}


async def test_guard_exceptions_map_to_codes(s3db_client, s3db_database):
    with pytest.raises(Forbidden, match="not yours"):
        await s3db_client.insert("notes", {"title": "forbidden"})
    with pytest.raises(NotFound):
        await s3db_client.insert("notes", {"title": "hidden"})
    with pytest.raises(ValidationFailed) as invalid:
        await s3db_client.insert("notes", {"title": "invalid"})
    assert invalid.value.errors == [{"field": "title", "rule": "custom", "message": "not that one"}]
    with capture_logs() as logs, pytest.raises(InternalError) as crash:
        await s3db_client.insert("notes", {"title": "crash"})
    assert "secret-bucket-name" not in repr(crash.value.frame)
    assert crash.value.error_id and crash.value.error_id in repr(logs)  # quotable, and logged
    assert (await s3db_client.insert("notes", {"title": "fine"}))["title"] == "fine"
    assert [n["title"] for n in (await s3db_database.resources.notes.list()).items] == ["fine"]
