"""Entry-point loading shared by every plugin group (storage, brokers, drivers, limiters).

Each group is read once per process and each entry point is imported on first use, like llm's
``load_plugins()``; tests that install a distribution at run time call ``clear_entry_point_cache``.
"""

from __future__ import annotations

import inspect
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any


@cache
def _group(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


@cache
def _load(group: str, name: str) -> Any:
    return _group(group)[name].load()


def entry_point_names(group: str) -> list[str]:
    return sorted(_group(group))


def load_entry_point(group: str, name: str) -> Any:
    """The object registered as ``name`` in ``group``; ValueError naming the known ones if absent."""
    if name not in _group(group):
        known = ", ".join(entry_point_names(group)) or "none"
        raise ValueError(f"no {group!r} plugin named {name!r} (installed: {known})")
    return _load(group, name)


def clear_entry_point_cache() -> None:
    _group.cache_clear()
    _load.cache_clear()


async def await_me_maybe(value: Any) -> Any:
    """Await ``value`` if it is awaitable (hooks and guards may be sync or async)."""
    if inspect.isawaitable(value):
        return await value
    return value
