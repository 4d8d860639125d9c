"""The async Python client for WebSocket protocol v1, as a package: ``errors`` (one exception per
server error code), ``subscription`` (``Event``, ``Page``, ``Subscription``), ``client``
(``Client``: requests, reconnect with resubscribe, token refresh), ``channel`` (``Channel``,
``ChannelMessage``: joined channels).

    from s3db_ws_plugin.client import Client, Forbidden
"""

from .channel import Channel, ChannelMessage
from .client import Backoff, Client, TokenSource, jwt_expiry, redact, refresh_delay
from .errors import (
    ERRORS,
    ClientError,
    Conflict,
    ConnectionLost,
    Forbidden,
    InternalError,
    InvalidJSON,
    InvalidMessage,
    NotFound,
    RateLimited,
    RequestTimeout,
    ResourceNotFound,
    SlowConsumer,
    Unauthorized,
    UnknownMessageType,
    ValidationFailed,
    error_from_frame,
)
from .subscription import EVENT_KINDS, RELOAD, Event, Page, Position, Subscription

__all__ = [
    "ERRORS",
    "EVENT_KINDS",
    "Backoff",
    "Channel",
    "ChannelMessage",
    "Client",
    "ClientError",
    "Conflict",
    "ConnectionLost",
    "Event",
    "Forbidden",
    "InternalError",
    "InvalidJSON",
    "InvalidMessage",
    "NotFound",
    "Page",
    "Position",
    "RELOAD",
    "RateLimited",
    "RequestTimeout",
    "ResourceNotFound",
    "SlowConsumer",
    "Subscription",
    "TokenSource",
    "Unauthorized",
    "UnknownMessageType",
    "ValidationFailed",
    "error_from_frame",
    "jwt_expiry",
    "redact",
    "refresh_delay",
]
