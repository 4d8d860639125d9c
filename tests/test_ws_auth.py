"""Authentication: token sources, JWT failures, expiry and refresh, API keys, anonymous access,
and a third-party driver installed through an entry point.

What a user of the product sees (who the server says they are, that a refresh keeps the
connection open, that a refresh cannot switch users, that devices sign in with API keys, that
no credential reaches the logs) is tested through ``s3db_ws_plugin.client.Client``.

The tests in the "on the wire" section stay on the independent ``websockets`` library because
their subject is the protocol itself, which the Python client cannot produce or observe: the
seed's ``?token=`` query string (the client always sends ``Authorization: Bearer``), a first
``auth`` frame before ``connected`` and the order of those frames, frames sent before
authenticating, the auth timeout, and the exact failure shape, one ``error UNAUTHORIZED``
frame followed by close code 4401 (the client turns all of that into ``Unauthorized``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import jwt
import pytest
import structlog
from ws_helpers import JWT_AUTH, SECRET, connect, make_token, notes_resource, serve

from s3db_ws_plugin.client import Forbidden, Unauthorized

DEVICE_KEY = "dev-key-0123456789"
DEVICE = {"id": "sensor-7", "role": "device", "site": "lab"}
API_KEY_AUTH = {
    "required": True,
    "drivers": [
        {"driver": "apiKey", "config": {"keys": {DEVICE_KEY: DEVICE}}},
        {"driver": "jwt", "config": {"secret": SECRET}},
    ],
}


# -- through the Python client -------------------------------------------------------------------
@pytest.fixture
def start(s3db_database, s3db_plugin_factory, s3db_jwt_secret):
    """``plugin = await start(api_keys=False)``: a plugin requiring auth, accepting the JWTs of
    ``s3db_token`` (after the device's API key when ``api_keys``)."""

    async def start(*, api_keys=False):
        drivers = [{"driver": "jwt", "config": {"secret": s3db_jwt_secret}}]
        if api_keys:
            drivers.insert(0, {"driver": "apiKey", "config": {"keys": {DEVICE_KEY: DEVICE}}})
        auth = {"required": True, "drivers": drivers}
        return await s3db_plugin_factory(s3db_database, resources={}, auth=auth)

    return start


async def test_bearer_header_authenticates(start, s3db_client_factory, s3db_token):
    plugin = await start()
    bob = await s3db_client_factory(plugin, s3db_token("bob"))  # the client sends a Bearer header
    assert bob.user["id"] == "bob" and bob.user["role"] == "user"


async def test_refresh_extends_the_connection_past_the_first_expiry(
    start, s3db_client_factory, s3db_token
):
    plugin = await start()
    with structlog.testing.capture_logs() as logs:
        client = await s3db_client_factory(plugin, s3db_token("frank", exp=time.time() + 2.5))
        user = await client.auth(s3db_token("frank", ttl=60))
        assert user["id"] == "frank"
        await asyncio.sleep(2.8)  # past the first token's exp
        assert await client.ping()
    assert client.connected and client.reconnects == 0
    # Nothing unsolicited arrived (the client logs every error frame nobody asked for).
    assert not [e for e in logs if e["event"] in ("server error", "disconnected")], logs


async def test_refresh_with_another_users_token_is_forbidden(start, s3db_client_factory, s3db_token):
    plugin = await start()
    client = await s3db_client_factory(plugin, s3db_token("henry"))
    with pytest.raises(Forbidden):
        await client.auth(s3db_token("ivan"))
    assert await client.ping()
    assert client.user["id"] == "henry"


async def test_api_key_in_header_and_query_and_jwt_in_the_same_chain(
    start, s3db_client_factory, s3db_token
):
    plugin = await start(api_keys=True)
    device = await s3db_client_factory(plugin, api_key=DEVICE_KEY)  # the x-api-key header
    assert device.user == DEVICE
    device = await s3db_client_factory(plugin, url=f"{plugin.url}?apiKey={DEVICE_KEY}")
    assert device.user["id"] == "sensor-7"
    person = await s3db_client_factory(plugin, s3db_token("owner"))
    assert person.user["id"] == "owner"
    with pytest.raises(Unauthorized):  # on the wire: test_an_unknown_api_key_is_rejected_...
        await s3db_client_factory(plugin, api_key="stolen")


async def test_tokens_and_keys_never_reach_the_logs(start, s3db_client_factory, s3db_token):
    plugin = await start(api_keys=True)
    token = s3db_token("judy")
    merge = [structlog.contextvars.merge_contextvars]
    with structlog.testing.capture_logs(processors=merge) as logs:
        client = await s3db_client_factory(plugin, token)  # Authorization: Bearer
        await client.auth(token)
        await client.close()
        seed_way = await s3db_client_factory(plugin, url=f"{plugin.url}?token={token}")
        await seed_way.close()
        device = await s3db_client_factory(plugin, api_key=DEVICE_KEY)
        await device.close()
        with pytest.raises(Unauthorized):
            await s3db_client_factory(plugin, url=f"{plugin.url}?token={token}x")
        with pytest.raises(Unauthorized):
            await s3db_client_factory(plugin, token + "x")
    text = repr(logs)  # the server's logs and the client's
    assert logs and token not in text and DEVICE_KEY not in text
    assert any(e.get("client_id") and e.get("user_id") == "judy" for e in logs)


# -- on the wire, with the independent `websockets` library -------------------------------------
async def expect_unauthorized(client, request_id=None) -> dict:
    """The server sends error UNAUTHORIZED, then closes with 4401."""
    code, frames = await client.closed()
    assert code == 4401
    errors = [f for f in frames if f["type"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == "UNAUTHORIZED", frames
    if request_id is not None:
        assert errors[0]["requestId"] == request_id
    return errors[0]


async def test_token_in_query_string_authenticates():
    async with serve(resources={}, auth=JWT_AUTH) as (_, plugin):
        token = make_token("alice", role="admin", tenantId="t1")
        async with connect(plugin.url, token=token) as client:
            user = client.hello["user"]
            assert user["id"] == "alice" and user["role"] == "admin" and user["tenantId"] == "t1"
            assert (await client.call("ping"))["type"] == "pong"


async def test_first_frame_auth_then_connected():
    async with serve(resources={}, auth=JWT_AUTH) as (_, plugin):
        async with connect(plugin.url, connected=False) as client:
            reply = await client.call("auth", token=make_token("carol"))
            assert reply["type"] == "authenticated" and reply["user"]["id"] == "carol"
            hello = await client.recv()
            assert hello["type"] == "connected" and hello["user"]["id"] == "carol"
            assert (await client.call("ping"))["type"] == "pong"


async def test_frames_before_auth_are_refused_with_4401():
    async with serve(notes_resource, resources={"notes": True}, auth=JWT_AUTH) as (_, plugin):
        async with connect(plugin.url, connected=False) as client:
            assert (await client.call("ping"))["type"] == "pong"  # ping is always allowed
            await client.send({"type": "list", "resource": "notes", "requestId": 9})
            await expect_unauthorized(client, request_id=9)


async def test_no_auth_frame_within_auth_timeout_closes_4401():
    async with serve(resources={}, auth=JWT_AUTH, auth_timeout=0.3) as (_, plugin):
        started = time.monotonic()
        async with connect(plugin.url, connected=False) as client:
            error = await expect_unauthorized(client)
        assert "auth" in error["message"]
        assert 0.25 < time.monotonic() - started < 3


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(
            make_token("mallory", secret="not-the-server-secret-but-long-enough"), id="forged"
        ),
        pytest.param(make_token("mallory", expires_in=-60), id="expired"),
        pytest.param(
            jwt.encode({"sub": "mallory", "role": "admin"}, None, algorithm="none"), id="alg-none"
        ),
        pytest.param(make_token("mallory", aud="other-app"), id="wrong-audience"),
        pytest.param(make_token("mallory", nbf=time.time() + 600), id="not-yet-valid"),
        pytest.param("garbage", id="garbage"),
    ],
)
async def test_invalid_tokens_are_rejected_with_4401(token):
    auth = {
        "required": True,
        "drivers": [{"driver": "jwt", "config": {"secret": SECRET, "audience": "app"}}],
    }
    async with serve(resources={}, auth=auth) as (_, plugin):
        async with connect(plugin.url, token=token, connected=False) as client:
            error = await expect_unauthorized(client)
            assert token not in error["message"]
        async with connect(plugin.url, connected=False) as client:  # in an auth frame too
            await client.send({"type": "auth", "token": token, "requestId": "a1"})
            await expect_unauthorized(client, request_id="a1")
        good = make_token("alice", aud="app")
        async with connect(plugin.url, token=good) as client:
            assert client.hello["user"]["id"] == "alice"


async def test_invalid_credentials_fail_even_when_auth_is_optional():
    auth = {**JWT_AUTH, "required": False}
    async with serve(resources={}, auth=auth) as (_, plugin):
        async with connect(plugin.url) as anonymous:
            assert anonymous.hello["user"] is None
            assert (await anonymous.call("ping"))["type"] == "pong"
        bad = make_token("x", secret="wrong-secret-that-is-long-enough-for-hs256")
        async with connect(plugin.url, token=bad, connected=False) as client:
            await expect_unauthorized(client)
        async with connect(plugin.url) as upgrading:  # an anonymous connection may sign in
            reply = await upgrading.call("auth", token=make_token("dave"))
            assert reply["type"] == "authenticated" and reply["user"]["id"] == "dave"
            assert (await upgrading.sync()) == []  # `connected` was already sent


async def test_connection_closes_4401_when_its_token_expires():
    async with serve(resources={}, auth=JWT_AUTH) as (_, plugin):
        token = make_token("erin", expires_in=2.5)  # generous: a loaded machine
        exp = jwt.decode(token, options={"verify_signature": False})["exp"]
        async with connect(plugin.url, token=token) as client:
            assert (await client.call("ping"))["type"] == "pong"
            error = await expect_unauthorized(client)
            assert time.time() >= exp - 0.05
            assert "expired" in error["message"]


async def test_refresh_expiring_again_still_closes():
    async with serve(resources={}, auth=JWT_AUTH) as (_, plugin):
        first_exp = time.time() + 2.0  # lifetimes generous enough for a loaded machine
        async with connect(plugin.url, token=make_token("gina", expires_in=2.0)) as client:
            await client.call("auth", token=make_token("gina", expires_in=4.0))
            await expect_unauthorized(client)
            assert time.time() > first_exp + 1.0  # the refreshed token's exp, not the first


async def test_an_unknown_api_key_is_rejected_with_4401():
    async with serve(resources={}, auth=API_KEY_AUTH) as (_, plugin):
        async with connect(
            plugin.url, additional_headers={"x-api-key": "stolen"}, connected=False
        ) as bad:
            await expect_unauthorized(bad)


DRIVER_SOURCE = '''
from s3db_auth_drivers import AuthError, User


class MagicLinkDriver:
    """Accepts tokens "magic:<user>"; rejects "magic:" tokens for unknown users."""

    name = "magic"

    def __init__(self, config):
        self.users = config["users"]

    def authenticate(self, creds):
        if not creds.token or not creds.token.startswith("magic:"):
            return None
        name = creds.token.removeprefix("magic:")
        if name not in self.users:
            raise AuthError("unknown magic link")
        return User({"id": name, "role": self.users[name]})
'''


@pytest.fixture
def magic_driver_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A throw-away distribution registering a driver in the ``s3db.auth_drivers`` group."""
    (tmp_path / "magic_auth.py").write_text(DRIVER_SOURCE)
    dist = tmp_path / "magic_auth-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: magic-auth\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[s3db.auth_drivers]\nmagic = magic_auth:MagicLinkDriver\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("magic_auth", None)


async def test_third_party_driver_from_an_entry_point(magic_driver_installed):
    auth = {
        "required": True,
        "drivers": [{"driver": "magic", "config": {"users": {"kim": "admin"}}}],
    }
    async with serve(resources={}, auth=auth) as (_, plugin):
        async with connect(plugin.url, token="magic:kim") as client:
            assert client.hello["user"] == {"id": "kim", "role": "admin"}
        async with connect(plugin.url, token="magic:eve", connected=False) as client:
            error = await expect_unauthorized(client)
            assert error["message"] == "unknown magic link"
