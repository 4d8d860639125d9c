"""Tests for s3db_auth_drivers: User, Credentials, the JWT and apiKey drivers, AuthChain."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import pickle
import sys
import textwrap
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from s3db_auth_drivers import AuthChain, AuthError, Credentials, User, load_driver
from s3db_auth_drivers.apikey import ApiKeyDriver
from s3db_auth_drivers.jwt import JWTDriver
from s3db_core.plugins import clear_entry_point_cache

SECRET = "test-secret-that-is-at-least-32-bytes-long"
CLAIMS = {"sub": "u1", "role": "admin", "tenantId": "t1", "name": "Ann", "email": "a@x.io"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims: dict, secret: str = SECRET, **kw) -> str:
    return jwt.encode(claims, secret, algorithm=kw.pop("algorithm", "HS256"), **kw)


def bearer(token: str) -> Credentials:
    return Credentials(token=token)


@pytest.fixture(scope="module")
def ec_keys() -> tuple[ec.EllipticCurvePrivateKey, str]:
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public_pem.decode()


# --- User -------------------------------------------------------------------------------


def test_user_exposes_claims_by_attribute_and_key() -> None:
    user = User(CLAIMS)
    assert (user.id, user.role, user.tenantId, user["tenantId"]) == ("u1", "admin", "t1", "t1")
    assert user.name == "Ann" and user.email == "a@x.io"
    assert user.get("email") == "a@x.io" and user.get("missing", 7) == 7
    assert "tenantId" in user and "missing" not in user
    assert user.missing is None
    with pytest.raises(KeyError):
        user["missing"]
    assert user["id"] == "u1" and user["role"] == "admin"


def test_user_id_falls_back_to_id_claim_and_role_defaults_to_user() -> None:
    user = User({"id": 42})
    assert user.id == "42" and user.role == "user" and user.expires_at is None
    with pytest.raises(ValueError):
        User({"role": "admin"})


def test_user_is_read_only_and_to_dict_is_a_copy() -> None:
    user = User(CLAIMS, expires_at=123.0)
    with pytest.raises(AttributeError):
        user.role = "admin2"
    data = user.to_dict()
    data["role"] = "hacked"
    assert user.role == "admin" and user.expires_at == 123.0
    assert json.loads(json.dumps(user.to_dict()))["tenantId"] == "t1"
    assert repr(user) == "User(id='u1', role='admin')"


@pytest.mark.parametrize(
    "clone", [copy.copy, copy.deepcopy, lambda u: pickle.loads(pickle.dumps(u))]
)
def test_user_can_be_copied_and_pickled(clone) -> None:
    twin = clone(User(CLAIMS, expires_at=9.0))
    assert (twin.id, twin.role, twin.tenantId, twin.expires_at) == ("u1", "admin", "t1", 9.0)
    assert twin == User(CLAIMS)


# --- Credentials ------------------------------------------------------------------------


def test_credentials_from_request_prefers_query_token_then_bearer() -> None:
    headers = {"Authorization": "Bearer from-header", "X-Api-Key": "k1"}
    creds = Credentials.from_request(headers, {"token": "from-query"}, "10.0.0.1")
    assert (creds.token, creds.api_key, creds.remote) == ("from-query", "k1", "10.0.0.1")
    assert Credentials.from_request(headers, {}).token == "from-header"
    assert Credentials.from_request({"authorization": "Basic abc"}, {}).token is None
    only_query_key = Credentials.from_request({}, {"apiKey": "k2"})
    assert only_query_key.api_key == "k2" and only_query_key.present
    assert not Credentials.from_request({}, {}).present


def test_credentials_repr_hides_secrets() -> None:
    creds = Credentials.from_request({"x-api-key": "sekrit-key"}, {"token": "sekrit-tok"}, "ip")
    assert "sekrit" not in repr(creds)


# --- JWT driver -------------------------------------------------------------------------


async def test_jwt_hs256_valid_token_gives_user_with_expiry() -> None:
    exp = int(time.time()) + 3600
    user = await JWTDriver({"secret": SECRET}).authenticate(bearer(hs256({**CLAIMS, "exp": exp})))
    assert (user.id, user.role, user.tenantId, user.name) == ("u1", "admin", "t1", "Ann")
    assert user.expires_at == exp


async def test_jwt_es256_valid_with_public_key(ec_keys) -> None:
    private, public_pem = ec_keys
    driver = JWTDriver({"public_key": public_pem, "algorithms": ["ES256"]})
    user = await driver.authenticate(bearer(jwt.encode(CLAIMS, private, algorithm="ES256")))
    assert user.id == "u1"
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(AuthError, match="signature"):
        await driver.authenticate(bearer(jwt.encode(CLAIMS, other, algorithm="ES256")))


async def test_jwt_no_token_is_not_mine() -> None:
    assert await JWTDriver({"secret": SECRET}).authenticate(Credentials(api_key="k")) is None


def _alg_none_token(claims: dict) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}."


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (hs256(CLAIMS, "another-secret-that-is-long-enough-000"), "invalid token signature"),
        (hs256({**CLAIMS, "exp": int(time.time()) - 60}), "token expired"),
        (hs256({**CLAIMS, "nbf": int(time.time()) + 600}), "token not yet valid"),
        (_alg_none_token(CLAIMS), "token algorithm not allowed"),
        (hs256(CLAIMS, SECRET * 2, algorithm="HS512"), "token algorithm not allowed"),
        (hs256({**CLAIMS, "aud": "someone-else"}), "invalid token audience"),
        ("abc.def.ghi", "malformed token"),
        (hs256({"role": "admin"}), "token has no subject"),
    ],
    ids=["forged", "expired", "nbf", "alg-none", "alg-unlisted", "aud", "garbage", "no-sub"],
)
async def test_jwt_rejections_have_short_messages_without_the_token(token, message) -> None:
    with pytest.raises(AuthError) as info:
        await JWTDriver({"secret": SECRET}).authenticate(bearer(token))
    assert str(info.value) == message
    assert token not in str(info.value) and token.split(".")[0] not in str(info.value)


async def test_jwt_issuer_and_audience_checked_when_configured() -> None:
    driver = JWTDriver({"secret": SECRET, "issuer": "https://auth", "audience": "s3db"})
    good = hs256({**CLAIMS, "iss": "https://auth", "aud": "s3db"})
    assert (await driver.authenticate(bearer(good))).id == "u1"
    with pytest.raises(AuthError, match="issuer"):
        await driver.authenticate(bearer(hs256({**CLAIMS, "iss": "https://evil", "aud": "s3db"})))
    with pytest.raises(AuthError, match="audience"):
        await driver.authenticate(bearer(hs256({**CLAIMS, "iss": "https://auth", "aud": "x"})))


async def test_jwt_leeway_accepts_small_skew_and_extends_expiry() -> None:
    exp = int(time.time()) - 3
    token = hs256({**CLAIMS, "exp": exp})
    with pytest.raises(AuthError, match="expired"):
        await JWTDriver({"secret": SECRET}).authenticate(bearer(token))
    user = await JWTDriver({"secret": SECRET, "leeway": 30}).authenticate(bearer(token))
    assert user.expires_at == exp + 30
    nbf_soon = hs256({**CLAIMS, "nbf": int(time.time()) + 3})
    assert await JWTDriver({"secret": SECRET, "leeway": 30}).authenticate(bearer(nbf_soon))


async def test_jwt_required_claims() -> None:
    driver = JWTDriver({"secret": SECRET, "required": ["exp"]})
    with pytest.raises(AuthError, match="'exp' claim"):
        await driver.authenticate(bearer(hs256(CLAIMS)))


async def test_jwt_public_key_cannot_be_used_as_hmac_secret(ec_keys) -> None:
    """Algorithm confusion: an HS256 token signed with the public PEM must not pass."""
    _, public_pem = ec_keys
    driver = JWTDriver(
        {"secret": SECRET, "public_key": public_pem, "algorithms": ["HS256", "ES256"]}
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64(json.dumps(CLAIMS).encode())}"
    sig = hmac.new(public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(AuthError, match="signature"):
        await driver.authenticate(bearer(f"{signing_input}.{b64(sig)}"))


async def test_jwt_token_not_shaped_like_a_jwt_is_not_mine() -> None:
    assert await JWTDriver({"secret": SECRET}).authenticate(bearer("plain-api-key")) is None


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"secret": SECRET, "algorithms": ["HS256", "none"]}, "'none' is never accepted"),
        ({"secret": SECRET, "algorithms": ["None"]}, "'none' is never accepted"),
        ({"secret": SECRET, "algorithms": "HS256"}, "non-empty list"),
        ({"secret": SECRET, "algorithms": []}, "non-empty list"),
        ({"secret": SECRET, "algorithms": ["XX999"]}, "unknown jwt algorithm"),
        ({"algorithms": ["HS256"]}, "needs 'secret'"),
        ({"secret": SECRET, "algorithms": ["ES256"]}, "needs 'public_key'"),
        ({"public_key": "not a pem", "algorithms": ["RS256"]}, "not usable with RS256"),
    ],
    ids=["none", "None", "str", "empty", "unknown", "no-secret", "no-public-key", "bad-pem"],
)
def test_jwt_bad_config_fails_at_construction(config, match) -> None:
    with pytest.raises(ValueError, match=match):
        JWTDriver(config)


# --- apiKey driver ----------------------------------------------------------------------

DEVICE_KEYS = {"dev-key-1": {"id": "sensor-1", "role": "device", "site": "lab"}}


@pytest.mark.parametrize(
    "creds",
    [
        Credentials.from_request({"X-API-KEY": "dev-key-1"}, {}),
        Credentials.from_request({}, {"apiKey": "dev-key-1"}),
        Credentials.from_request({}, {"token": "dev-key-1"}),
        Credentials(token="dev-key-1"),
    ],
    ids=["header", "query", "query-token", "auth-frame"],
)
async def test_apikey_accepted_from_every_source(creds) -> None:
    user = await ApiKeyDriver({"keys": DEVICE_KEYS}).authenticate(creds)
    assert (user.id, user.role, user.site, user["site"]) == ("sensor-1", "device", "lab", "lab")
    assert "dev-key-1" not in json.dumps(user.to_dict())


async def test_apikey_unknown_key_rejected_but_unknown_token_is_not_mine() -> None:
    driver = ApiKeyDriver({"keys": DEVICE_KEYS})
    with pytest.raises(AuthError, match="invalid api key"):
        await driver.authenticate(Credentials.from_request({"x-api-key": "nope"}, {}))
    with pytest.raises(AuthError):
        await driver.authenticate(Credentials.from_request({}, {"apiKey": "nope"}))
    assert await driver.authenticate(Credentials(token="nope")) is None
    assert await driver.authenticate(Credentials()) is None


async def test_apikey_list_layout_custom_header_and_default_role() -> None:
    driver = ApiKeyDriver(
        {
            "header": "X-Device-Key",
            "query_param": "k",
            "keys": [
                {"key": "a-key", "id": "svc-a"},
                {"key": "b-key", "user": {"id": "svc-b", "role": "system"}},
                {"key": "c-key", "user": "svc-c"},
            ],
        }
    )
    a = await driver.authenticate(Credentials(headers={"x-device-key": "a-key"}))
    assert (a.id, a.role, a.get("key")) == ("svc-a", "user", None)
    b = await driver.authenticate(Credentials(query={"k": "b-key"}))
    assert (b.id, b.role) == ("svc-b", "system")
    assert (await driver.authenticate(Credentials(token="c-key"))).id == "svc-c"
    with pytest.raises(AuthError):
        await driver.authenticate(Credentials(headers={"x-device-key": "zzz"}))


@pytest.mark.parametrize(
    "keys",
    [
        [{"key": "k", "id": "a"}, {"key": "k", "id": "b"}],
        [{"id": "a"}],
        {"": {"id": "a"}},
        {"k": {"role": "device"}},
    ],
    ids=["duplicate", "no-key", "empty-key", "no-id"],
)
def test_apikey_bad_config_fails_at_construction(keys) -> None:
    with pytest.raises(ValueError):
        ApiKeyDriver({"keys": keys})


# --- AuthChain --------------------------------------------------------------------------


@pytest.fixture
def iot_chain() -> AuthChain:
    """The seed's IoT setup: devices use API keys, users use JWTs."""
    return AuthChain(
        [
            {"driver": "apiKey", "config": {"keys": DEVICE_KEYS}},
            {"driver": "jwt", "config": {"secret": SECRET}},
        ]
    )


async def test_chain_jwt_passes_through_apikey_driver(iot_chain) -> None:
    creds = Credentials.from_request({}, {"token": hs256(CLAIMS)})
    user = await iot_chain.authenticate(creds)
    assert (user.id, user.role, user.tenantId) == ("u1", "admin", "t1")


@pytest.mark.parametrize(
    "creds",
    [
        Credentials.from_request({"x-api-key": "dev-key-1"}, {}),
        Credentials.from_request({}, {"token": "dev-key-1"}),
    ],
    ids=["header", "token"],
)
async def test_chain_api_key_claimed_by_apikey_driver(iot_chain, creds) -> None:
    assert (await iot_chain.authenticate(creds)).role == "device"


@pytest.mark.parametrize(
    ("creds", "message"),
    [
        (Credentials.from_request({}, {"token": "garbage"}), "invalid credentials"),
        (Credentials.from_request({"x-api-key": "stolen?"}, {}), "invalid api key"),
        (Credentials(token=hs256(CLAIMS, "wrong-secret-wrong-secret-wrong-secret")), "signature"),
    ],
    ids=["unclaimed-token", "unknown-key", "forged-jwt"],
)
async def test_chain_rejects_invalid_credentials(iot_chain, creds, message) -> None:
    with pytest.raises(AuthError, match=message):
        await iot_chain.authenticate(creds)


async def test_chain_without_credentials_is_anonymous(iot_chain) -> None:
    assert await iot_chain.authenticate(Credentials.from_request({}, {}, "1.2.3.4")) is None


async def test_chain_without_drivers_ignores_credentials() -> None:
    assert await AuthChain([]).authenticate(Credentials(token="anything")) is None


class _Fixed:
    """A driver object answering a fixed result, sync or async, recording calls."""

    name = "fixed"

    def __init__(self, result, *, sync: bool = False) -> None:
        self.result, self.calls = result, 0
        if sync:
            self.authenticate = self._sync

    def _sync(self, creds: Credentials):
        self.calls += 1
        if isinstance(self.result, Exception):
            raise self.result
        return self.result

    async def authenticate(self, creds: Credentials):
        return self._sync(creds)


async def test_chain_order_first_user_wins_and_sync_drivers_work() -> None:
    first, second = _Fixed(None, sync=True), _Fixed({"sub": "from-dict"})
    third = _Fixed(User({"sub": "never"}))
    user = await AuthChain([first, second, third]).authenticate(Credentials(token="t"))
    assert user.id == "from-dict" and isinstance(user, User)
    assert (first.calls, second.calls, third.calls) == (1, 1, 0)


async def test_chain_auth_error_stops_the_chain() -> None:
    after = _Fixed(User({"sub": "x"}))
    with pytest.raises(AuthError, match="nope"):
        await AuthChain([_Fixed(AuthError("nope")), after]).authenticate(Credentials(token="t"))
    assert after.calls == 0


async def test_chain_rejects_a_driver_returning_garbage() -> None:
    with pytest.raises(TypeError):
        await AuthChain([_Fixed("a string")]).authenticate(Credentials(token="t"))


def test_builtin_driver_aliases_load_through_entry_points() -> None:
    for name in ("apiKey", "apikey", "api-key"):
        assert isinstance(load_driver(name, {"keys": {}}), ApiKeyDriver)
    assert isinstance(load_driver("jwt", {"secret": SECRET}), JWTDriver)


def test_unknown_driver_lists_known_names() -> None:
    with pytest.raises(ValueError, match="'kerberos'.*apiKey.*jwt"):
        AuthChain([{"driver": "kerberos"}])
    with pytest.raises(ValueError, match="'driver' name"):
        AuthChain([{"config": {}}])


async def test_third_party_driver_installed_through_entry_point(tmp_path, monkeypatch, request):
    (tmp_path / "s3db_test_driver.py").write_text(
        textwrap.dedent(
            '''
            """A third-party driver: a shared secret in a request header."""
            from s3db_auth_drivers import AuthError, User


            class HeaderSecretDriver:
                name = "header-secret"

                def __init__(self, config):
                    self.secret = config["secret"]

                async def authenticate(self, creds):
                    value = creds.headers.get("x-shared-secret")
                    if value is None:
                        return None
                    if value != self.secret:
                        raise AuthError("bad shared secret")
                    return User({"sub": "svc", "role": "service", "ip": creds.remote})
            '''
        )
    )
    dist_info = tmp_path / "s3db_test_driver-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: s3db-test-driver\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[s3db.auth_drivers]\nheader-secret = s3db_test_driver:HeaderSecretDriver\n"
    )
    with pytest.raises(ValueError, match="unknown auth driver 'header-secret'"):
        load_driver("header-secret", {"secret": "s"})  # not on sys.path yet
    monkeypatch.syspath_prepend(str(tmp_path))
    request.addfinalizer(clear_entry_point_cache)
    request.addfinalizer(lambda: sys.modules.pop("s3db_test_driver", None))

    chain = AuthChain([{"driver": "header-secret", "config": {"secret": "open-sesame"}}])
    assert type(chain.drivers[0]).__module__ == "s3db_test_driver"
    ok = Credentials.from_request({"X-Shared-Secret": "open-sesame"}, {}, "10.1.1.1")
    user = await chain.authenticate(ok)
    assert (user.id, user.role, user.ip) == ("svc", "service", "10.1.1.1")
    with pytest.raises(AuthError, match="bad shared secret"):
        await chain.authenticate(Credentials.from_request({"x-shared-secret": "guess"}, {}))
    assert await chain.authenticate(Credentials.from_request({}, {})) is None
