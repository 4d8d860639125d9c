"""Every numeric option is checked by one set of validators (s3db_core.options): the same
mistake gets the same answer (``<option> must be <what>, got <value>``) from the database, the
plugin, the brokers, the rate limiters, the S3 store's URL options and the client."""

from __future__ import annotations

import math
import re

import pytest

from s3db_auth_drivers.jwt import JWTDriver
from s3db_core import Database
from s3db_core.brokers import BrokerOptions
from s3db_core.options import number_in, optional_positive_int, positive_float, positive_int
from s3db_core.storage.s3 import S3Storage
from s3db_ws_plugin import WebSocketPlugin
from s3db_ws_plugin.client import Client
from s3db_ws_plugin.rate_limiters import load_rate_limiter

SHAPE = re.compile(r"^.+ must be .+, got .+$")


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: Database("memory://o", max_depth=0), "max_depth"),
        (lambda: Database("memory://o", max_record_size=True), "max_record_size"),
        (lambda: WebSocketPlugin(max_subscriptions=0), "max_subscriptions"),
        (lambda: WebSocketPlugin(max_concurrent_requests=1.5), "max_concurrent_requests"),
        (lambda: WebSocketPlugin(header_timeout=math.nan), "header_timeout"),
        (lambda: WebSocketPlugin(max_connections_per_ip=0), "max_connections_per_ip"),
        (lambda: WebSocketPlugin(max_subscriptions_per_ip=-1), "max_subscriptions_per_ip"),
        (lambda: WebSocketPlugin(filter_limits={"max_keys": 0}), "filter_limits 'max_keys'"),
        (lambda: load_rate_limiter("memory", {"window_ms": 0}), "rate limit 'window_ms'"),
        (lambda: BrokerOptions.from_url("redis://h/0?history_size=x"), "broker option 'history_size'"),
        (lambda: BrokerOptions.from_url("redis://h/0", {"history_size": 1.5}), "broker option"),
        (lambda: S3Storage("http://k:s@127.0.0.1:1/b?timeout=0"), "storage URL option timeout"),
        (lambda: Client("ws://h/", max_pending=0), "max_pending"),
        (lambda: WebSocketPlugin(max_message_size=0), "max_message_size"),  # 0: no limit
        (lambda: WebSocketPlugin(max_queue_bytes=-1), "max_queue_bytes"),
        (lambda: WebSocketPlugin(heartbeat_interval=0), "heartbeat_interval"),
        (lambda: WebSocketPlugin(auth_timeout=math.nan), "auth_timeout"),
        (lambda: JWTDriver({"secret": "s", "leeway": math.nan}), "jwt 'leeway'"),
        (lambda: JWTDriver({"secret": "s", "leeway": "-5"}), "jwt 'leeway'"),
    ],
)
def test_every_numeric_option_answers_in_one_shape(build, named):
    with pytest.raises(ValueError) as caught:
        build()
    message = str(caught.value)
    assert message.startswith(named) and SHAPE.match(message), message


def test_the_validators():
    assert positive_int("n", 3) == 3
    assert optional_positive_int("n", None) is None
    assert positive_float("t", 2) == 2.0 and isinstance(positive_float("t", 2), float)
    assert number_in("o", "7", 1, 10, integer=True, text=True) == 7
    assert number_in("o", "0.5", 0, 1, above=True, text=True) == 0.5
    for bad in (True, 0, -1, 1.0, "1", None):
        with pytest.raises(ValueError, match=r"^n must be a positive integer, got "):
            positive_int("n", bad)
    for bad in (math.inf, math.nan, 0, False, "1"):
        with pytest.raises(ValueError, match=r"^t must be a positive number, got "):
            positive_float("t", bad)
    with pytest.raises(ValueError, match=r"in \(0, 1\], got 0"):
        number_in("o", 0, 0, 1, above=True)
    # A long rejected value is shortened in the message.
    with pytest.raises(ValueError) as caught:
        positive_int("n", "x" * 10_000)
    assert len(str(caught.value)) < 120


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["serve", "app:db", "--workers", "0"], "--workers"),
        (["serve", "app:db", "--workers", "1.5"], "--workers"),
        (["repair", "memory://x", "--grace", "nan"], "--grace"),
        (["repair", "memory://x", "--grace", "-1"], "--grace"),
        (["repair", "memory://x", "--progress-every", "0"], "--progress-every"),
        (["tail", "ws://h/", "-r", "notes", "--wait", "inf"], "--wait"),
    ],
)
def test_command_line_numbers_use_the_same_validators(argv, named, capsys):
    from s3db_ws_plugin.cli import build_parser

    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(argv)
    assert caught.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {named}" in error and re.search(r"must be .+, got ", error), error


async def test_repair_refuses_a_grace_that_makes_writes_in_flight_look_stale():
    db = Database("memory://grace-check")
    await db.connect()
    try:
        for grace in (math.nan, -1, True):
            with pytest.raises(ValueError, match=r"^grace must be a number in \[0, "):
                await db.repair(grace=grace)
        assert (await db.repair(grace=0)).to_dict() is not None
    finally:
        await db.disconnect()
