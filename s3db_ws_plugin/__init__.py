"""s3db_ws_plugin: live, filtered, guarded change streams over WebSocket (protocol v1)."""

from .plugin import WebSocketPlugin
from .protocol import CloseCode, ErrorCode

__all__ = ["CloseCode", "ErrorCode", "WebSocketPlugin"]
