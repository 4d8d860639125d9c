"""s3db_ws_plugin: live, filtered, guarded change streams over WebSocket (protocol v1)."""

from .plugin import WebSocketPlugin
from .protocol import CloseCode, ErrorCode
from .recheck import RecheckOnAccessChange

__all__ = ["CloseCode", "ErrorCode", "RecheckOnAccessChange", "WebSocketPlugin"]
