"""Plugin plumbing shared by every host: the one entry-point loader, ``await_me_maybe`` and the
isolated call of announce-only hooks.

Entry points (storage schemes, brokers, auth drivers, rate limiters) follow one caching rule,
like llm's ``load_plugins()``: a group is read once per process; a name it does not hold makes
it read again once (a distribution installed at run time); each entry point is imported on
first use and the loaded object kept. ``clear_entry_point_cache()`` forgets it all.
"""

from __future__ import annotations

import inspect
import secrets
from importlib.metadata import EntryPoint, entry_points
from types import CoroutineType
from typing import Any

import pluggy

from .log import get_logger

log = get_logger("s3db.core")

_groups: dict[str, dict[str, EntryPoint]] = {}
_loaded: dict[tuple[str, str], Any] = {}


def _read(group: str, *, again: bool = False) -> dict[str, EntryPoint]:
    if again or group not in _groups:
        _groups[group] = {ep.name: ep for ep in entry_points(group=group)}
    return _groups[group]


def load_entry_point(group: str, name: str, *, kind: str | None = None) -> Any:
    """The object registered as ``name`` in ``group``. ValueError ``unknown <kind> <name>``
    naming the known ones if there is none (``kind`` defaults to the group's name)."""
    key = (group, name)
    try:
        return _loaded[key]
    except KeyError:
        pass
    found = _read(group)
    if name not in found:  # maybe installed since the group was read
        found = _read(group, again=True)
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise ValueError(f"unknown {kind or group} {name!r} (known: {known})")
    loaded = _loaded[key] = found[name].load()
    return loaded


def clear_entry_point_cache() -> None:
    """Forget every group read and every object loaded (tests that install a distribution)."""
    _groups.clear()
    _loaded.clear()


async def await_me_maybe(value: Any) -> Any:
    """Await ``value`` if it is awaitable (hooks and guards may be sync or async)."""
    # The two common cases first: ``inspect.isawaitable`` of a plain value (a sync hook's None)
    # goes as far as an ABC check.
    if value is None:
        return None
    if value.__class__ is CoroutineType or inspect.isawaitable(value):
        return await value
    return value


async def call_each_isolated(caller: pluggy.HookCaller, **kwargs: Any) -> None:
    """Call every implementation of ``caller`` in pluggy's order, awaiting what needs it; one
    that raises is logged with an ``error_id`` and the next one still runs.

    For hooks that announce something already done (``s3db_change``: the write is durable), where
    one broken listener must neither fail the caller nor keep the others from hearing it.
    """
    impls = caller.get_hookimpls()
    if not impls:
        return
    for impl in reversed(impls):
        if impl.hookwrapper or impl.wrapper:
            continue  # wrappers wrap a call; each implementation here is a call of its own
        try:
            result = impl.function(*[kwargs[name] for name in impl.argnames])
            if result is not None:
                await await_me_maybe(result)
        except Exception:
            log.exception(
                f"{caller.name} implementation failed",
                plugin=impl.plugin_name,
                error_id=secrets.token_hex(8),
            )
