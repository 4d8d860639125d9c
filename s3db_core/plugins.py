"""Entry-point loading shared by every plugin group (storage, brokers, drivers, limiters).

Each group is read once per process and each entry point is imported on first use, like llm's
``load_plugins()``; tests that install a distribution at run time call ``clear_entry_point_cache``.
"""

from __future__ import annotations

import inspect
import secrets
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy
import structlog

log = structlog.get_logger("s3db.core")


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


async def call_each_isolated(caller: pluggy.HookCaller, **kwargs: Any) -> None:
    """Call every implementation of ``caller`` in pluggy's order, awaiting what needs it; one
    that raises is logged with an ``error_id`` and the next one still runs.

    For hooks that announce something already done (``s3db_change``: the write is durable), where
    one broken listener must neither fail the caller nor keep the others from hearing it.
    """
    for impl in reversed(caller.get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:
            continue  # wrappers wrap a call; each implementation here is a call of its own
        try:
            await await_me_maybe(impl.function(*[kwargs[name] for name in impl.argnames]))
        except Exception:
            log.exception(
                f"{caller.name} implementation failed",
                plugin=impl.plugin_name,
                error_id=secrets.token_hex(8),
            )
