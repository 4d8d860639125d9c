"""Hook specifications the WebSocket plugin adds to its database's plugin manager (project
``s3db``) when it starts: register plugins implementing them after ``db.use_plugin(ws)``.

Implementations may be plain functions or coroutines; the plugin awaits whatever they return.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from s3db_core.plugins import await_me_maybe

if TYPE_CHECKING:
    from .connection import Connection

hookspec = pluggy.HookspecMarker("s3db")


@hookspec
def s3db_ws_connected(connection: Connection) -> Any:
    """Fires when a socket has authenticated (or was accepted as anonymous): ``connection``
    has ``client_id``, ``user`` (None when anonymous) and ``remote``."""


@hookspec
def s3db_ws_disconnected(connection: Connection, code: int | None) -> Any:
    """Fires when a socket that fired ``s3db_ws_connected`` has closed, with its close code;
    its subscriptions and channel memberships are already gone."""


@hookspec
def s3db_ws_message(connection: Connection, message: dict[str, Any]) -> Any:
    """Answers a custom message type: a ``type`` with a ``:`` that the protocol does not use.
    Return the reply frame (a dict with a ``type``; its ``requestId`` is added), or None when
    the type is not this implementation's (the next one is asked; if none answers, the client
    gets ``UNKNOWN_MESSAGE_TYPE``). Runs under the same frame size limit, rate limit and error
    handling as built-in types: raise ``ProtocolError`` or ``ForbiddenError``/
    ``ValidationError`` to answer with their code; anything else is ``INTERNAL_ERROR``."""


def add_hookspecs(pm: pluggy.PluginManager) -> None:
    """Add these specs to ``pm`` once."""
    if not hasattr(pm.hook, "s3db_ws_message"):
        import sys

        pm.add_hookspecs(sys.modules[__name__])


async def answer(pm: pluggy.PluginManager, connection: Connection, message: dict[str, Any]) -> Any:
    """The first non-None answer of the ``s3db_ws_message`` implementations, in pluggy's order
    (each awaited if it needs to be), or None."""
    caller = getattr(pm.hook, "s3db_ws_message", None)
    if caller is None:
        return None
    for impl in reversed(caller.get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:
            continue
        kwargs = {"connection": connection, "message": message}
        result = await await_me_maybe(impl.function(*[kwargs[name] for name in impl.argnames]))
        if result is not None:
            return result
    return None
