"""Change brokers: how a database hands its changes to whoever listens.

Brokers are found through the ``s3db.brokers`` entry-point group. ``local`` (the default) delivers
in-process, synchronously and in publish order, which keeps commit order per resource.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from .change import Change
from .plugins import load_entry_point

Listener = Callable[[Change], Awaitable[None] | None]


class LocalBroker:
    """In-process broker: ``publish`` calls every listener in order and awaits what they return."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def publish(self, change: Change) -> None:
        for listener in self._listeners:
            result = listener(change)
            if inspect.isawaitable(result):
                await result

    async def close(self) -> None:
        self._listeners.clear()


def load_broker(name: str = "local", config: dict[str, Any] | None = None):
    """Build the broker registered as ``name`` in ``s3db.brokers``."""
    return load_entry_point("s3db.brokers", name)(config or {})
