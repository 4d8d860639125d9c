"""Change brokers: how a database hands its changes to every listening process.

``load_broker(url)`` picks the engine registered in the ``s3db.brokers`` entry-point group under
the URL's scheme: ``local`` (default, in-process), ``redis://host:port/db`` (``redis.py``) or
``nats://host:port`` (``nats.py``). Options ride on the query string
(``redis://127.0.0.1:6379/0?prefix=shop&history_size=5000``) or in ``config``.
An engine is a class called as ``Engine(url, config)`` that implements ``Broker``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..plugins import load_entry_point
from .base import Broker, BrokerOptions, Listener, Position

__all__ = ["Broker", "BrokerOptions", "Listener", "Position", "broker_scheme", "load_broker"]

ENTRY_POINT_GROUP = "s3db.brokers"


def broker_scheme(url: str) -> str:
    """``redis`` for ``redis://...``, ``local`` for ``local`` or ``local://``."""
    return (url.partition("://")[0] if "://" in url else url).lower()


def load_broker(url: str = "local", config: Mapping[str, Any] | None = None) -> Broker:
    """Build the broker for ``url`` (or a bare engine name such as ``"local"``)."""
    if not isinstance(url, str) or not url:
        raise ValueError("broker must be a URL such as 'local', 'redis://...' or 'nats://...'")
    factory = load_entry_point(ENTRY_POINT_GROUP, broker_scheme(url), kind="broker")
    return factory(url, dict(config or {}))
