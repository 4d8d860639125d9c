"""Helpers for the plugin tests written with the product's Python client
(``s3db_ws_plugin.client.Client``); the raw-protocol tests use ``ws_helpers`` instead."""

from __future__ import annotations

from s3db_ws_plugin.client import Event, Subscription

TIMEOUT = 5.0  # generous: the suite shares two cores with benchmarks


async def received(sub: Subscription) -> list[Event]:
    """Every event ``sub`` has received so far, without waiting for more.

    The server answers a ping on a socket after the events of every write that returned before
    the ping was sent, and the client queues those events before it resolves the ping, so a
    round trip followed by non-blocking reads collects exactly what was delivered.
    """
    await sub.client.ping()
    events = []
    while True:
        try:
            events.append(await sub.next(timeout=0))
        except TimeoutError:
            return events
