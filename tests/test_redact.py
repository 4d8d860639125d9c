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
