"""s3db_ws_plugin: live, filtered, guarded change streams over WebSocket (protocol v1).

The public names are imported on first use (a module ``__getattr__``), so that importing the
client (``s3db_ws_plugin.client``) or the pytest plugin loads none of the server: no aiohttp
web server, no prometheus_client, no handlers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plugin import WebSocketPlugin
    from .protocol import CloseCode, ErrorCode
    from .recheck import RecheckOnAccessChange

# public name -> the module that defines it
_LAZY = {
    "CloseCode": "protocol",
    "ErrorCode": "protocol",
    "RecheckOnAccessChange": "recheck",
    "WebSocketPlugin": "plugin",
}

__all__ = ["CloseCode", "ErrorCode", "RecheckOnAccessChange", "WebSocketPlugin"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
