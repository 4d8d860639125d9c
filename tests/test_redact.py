"""Credentials never reach a log line or an error message, and redaction never mangles the rest:
a credential is masked where it stands whole, not wherever its characters happen to occur."""

from __future__ import annotations

import socket

import pytest

from s3db_core.redact import Verbatim, redact
from s3db_core.storage.s3 import S3Storage


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        # A one-letter access key is masked where it is the credential, not inside words.
        ("cannot open bucket k at 127.0.0.1", ("k",), "cannot open bucket *** at 127.0.0.1"),
        ("bucket", ("k", "s"), "bucket"),
        ("secret 'se+cret/x' refused", ("se+cret/x",), "secret '***' refused"),
        ("sig se%2Bcret%2Fx", ("se+cret/x",), "sig ***"),  # its percent-encoded form too
        ("http://AKID:hunter2@store:9000/b/k", (), "http://***@store:9000/b/k"),
        ("redis://:pw@cache:6379/0 down", (), "redis://***@cache:6379/0 down"),
        ("ws://h/?token=eyJ.a.b&x=1", (), "ws://h/?token=***&x=1"),
        (
            "GET /b/k?X-Amz-Signature=abc123&X-Amz-Date=1",
            (),
            "GET /b/k?X-Amz-Signature=***&X-Amz-Date=1",
        ),
        ("GET /?apiKey=dev-123 HTTP/1.1", (), "GET /?apiKey=*** HTTP/1.1"),
        (
            "no credentials at all: a=b https://host/path",
            (),
            "no credentials at all: a=b https://host/path",
        ),
    ],
)
def test_redact_masks_whole_credentials_only(text, secrets, expected):
    assert redact(text, secrets) == expected


def test_s3_error_keeps_the_bucket_name_when_the_key_is_a_substring_of_it():
    # Access key "k", secret "s": every "k" and "s" of "bucket", "keys", "s3"... stays.
    store = S3Storage(f"http://k:s@127.0.0.1:{closed_port()}/bucket/keys")
    cause = ConnectionRefusedError(111, f"Connect call failed to {store.endpoint}/bucket, key k")
    message = str(store._failure("GET", "keys/rec", cause))
    assert "buc***et" not in message
    assert "bucket/keys" in message and "'keys/rec'" in message
    assert message.endswith(f"Connect call failed to {store.endpoint}/bucket, key ***")


def test_verbatim_text_is_left_as_written_and_what_is_built_from_it_is_not() -> None:
    hint = Verbatim("use s3://KEY:SECRET@bucket/prefix or ws://h/?token=T")
    assert redact(hint) == hint and redact(hint, ("SECRET",)) == hint
    # Formatting user input into it makes a plain str again: the user's URL is redacted.
    built = f"{hint} (you gave s3://AKID:hunter2@real-bucket/x)"
    assert type(built) is str
    assert redact(built) == (
        "use s3://***@bucket/prefix or ws://h/?token=*** (you gave s3://***@real-bucket/x)"
    )


# One redactor serves the store's errors, the log processor, startup errors and the client's
# logged URL. Each case below was missed by one of the three redactors it replaced.
@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        # A password holding "#" or "?" (unencoded in a connection string) is still user-info.
        ("cannot reach s3://AKID:pa#ss@bucket/p", (), "cannot reach s3://***@bucket/p"),
        ("redis://:p?w@cache:6379/0 down", (), "redis://***@cache:6379/0 down"),
        # Credential parameters beyond tokens and API keys, and ';' as a separator.
        ("GET /?password=hunter2&x=1", (), "GET /?password=***&x=1"),
        ("GET /b/k?X-Amz-Credential=AKID%2F2024&a=1", (), "GET /b/k?X-Amz-Credential=***&a=1"),
        ("GET /?a=1;secret=s3cr3t", (), "GET /?a=1;secret=***"),
        # A token in a fragment (OAuth's implicit flow) or under another name.
        ("wss://h/ws#access_token=eyJ.a.b", (), "wss://h/ws#access_token=***"),
        ("wss://h/ws?jwt=eyJ.a.b&room=1", (), "wss://h/ws?jwt=***&room=1"),
        ("wss://h/ws?sessionToken=abc&room=1", (), "wss://h/ws?sessionToken=***&room=1"),
        ("wss://h/ws?auth=abc", (), "wss://h/ws?auth=***"),
        ("GET /o?X-Goog-Signature=abc", (), "GET /o?X-Goog-Signature=***"),
        # A known credential under a parameter name nobody could guess.
        ("wss://h/ws?k2=dev-key-123", ("dev-key-123",), "wss://h/ws?k2=***"),
    ],
)
def test_one_redactor_catches_what_any_of_the_old_ones_did(text, secrets, expected):
    assert redact(text, secrets) == expected


def test_startup_errors_and_the_client_use_the_one_redactor():
    from s3db_ws_plugin.client import Client
    from s3db_ws_plugin.startup import explain, report  # noqa: F401  (report redacts with it)

    client = Client("wss://AKID:pa#ss@h:8443/ws?jwt=eyJ.a.b&room=1", api_key="dev-key-123")
    assert "pa#ss" not in client.safe_url and "eyJ" not in client.safe_url
    assert client.safe_url == "wss://***@h:8443/ws?jwt=***&room=1"
    client = Client("ws://h/ws?k=1&other=dev-key-123", api_key="dev-key-123")
    assert "dev-key-123" not in client.safe_url
    client = Client("ws://h/ws?t=tok-987", token="tok-987")
    assert "tok-987" not in client.safe_url
    import s3db_ws_plugin.startup as startup

    assert not hasattr(startup, "redact_text")


def test_redaction_takes_linear_time_on_hostile_text():
    # Log values are redacted before they are cut to length: text a client chose must not make
    # the log processor spin. Quadratic scans of these take minutes; linear ones milliseconds.
    import time

    hostile = [
        "?" + "key" * 100_000,
        "a." * 100_000 + "://",
        "http://" + "x?" * 100_000,
        ("&token" * 20_000 + "=") * 2,
        "x://" * 50_000,
    ]
    started = time.monotonic()
    for text in hostile:
        redact(text, ("secret-value",))
    assert time.monotonic() - started < 5.0
