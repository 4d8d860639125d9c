"""``Settings``: every option of one ``WebSocketPlugin``, validated here, once (with the validators
of ``s3db_core.options``), and frozen. The parts of the server read their options from it and
validate none themselves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from s3db_core.options import (
    number_in,
    optional_positive_float,
    optional_positive_int,
    positive_float,
    positive_int,
)

from .budgets import (
    DEFAULT_MAX_FILTER_BYTES_PER_IP,
    DEFAULT_MAX_FILTER_BYTES_PER_USER,
    DEFAULT_MAX_SUBSCRIPTIONS_PER_IP,
    DEFAULT_MAX_SUBSCRIPTIONS_PER_USER,
)
from .channels import (
    DEFAULT_CHANNEL_RATES,
    DEFAULT_MAX_CHANNELS_PER_CONNECTION,
    DEFAULT_PRESENCE_TIMEOUT,
)
from .limits import (
    DEFAULT_LIST_MAX_BYTES,
    DEFAULT_LIST_SCAN_LIMIT,
    DEFAULT_MAX_FRAME_VALUES,
    DEFAULT_MAX_SUBSCRIPTIONS,
    FilterLimits,
)
from .resume import DEFAULT_REPLAY_MAX_BYTES

# The JavaScript-style (camelCase) spellings ``WebSocketPlugin.from_seed`` accepts, and the
# keyword argument each stands for.
SEED_KEYWORDS = {
    "rateLimit": "rate_limit",
    "heartbeatInterval": "heartbeat_interval",
    "maxMessageSize": "max_message_size",
    "maxQueueBytes": "max_queue_bytes",
    "authTimeout": "auth_timeout",
    "headerTimeout": "header_timeout",
    "maxConnectionsPerIp": "max_connections_per_ip",
    "maxUnauthenticatedPerIp": "max_unauthenticated_per_ip",
    "maxConcurrentRequests": "max_concurrent_requests",
    "trustedProxies": "trusted_proxies",
    "proxyHeader": "proxy_header",
}


def _metrics_token(metrics: bool | Mapping[str, Any]) -> str | None:
    """The bearer token ``/metrics`` requires (``metrics={"token": ...}``), or None."""
    if isinstance(metrics, bool):
        return None
    if not isinstance(metrics, Mapping) or set(metrics) - {"token"}:
        raise ValueError("metrics must be True, False or {'token': '...'}")
    token = metrics.get("token")
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError("metrics token must be a non-empty string")
    return token


def _channel_rates(rates: Mapping[str, Any] | None) -> dict[str, int]:
    merged = {**DEFAULT_CHANNEL_RATES, **(rates or {})}
    unknown = set(merged) - set(DEFAULT_CHANNEL_RATES)
    if unknown:
        raise ValueError(f"channel_rate_limit: unknown key(s) {sorted(unknown)}; use messages, updates")
    return {k: positive_int(f"channel_rate_limit {k!r}", v) for k, v in merged.items()}


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated options of one plugin (see ``WebSocketPlugin`` and docs/options.md)."""

    host: str
    port: int
    path: str
    heartbeat_interval: float | None
    max_message_size: int
    max_queue_bytes: int
    compression: bool
    auth_timeout: float
    header_timeout: float
    max_connections_per_ip: int | None
    max_unauthenticated_per_ip: int | None
    max_concurrent_requests: int
    filter_limits: FilterLimits
    max_subscriptions: int
    list_scan_limit: int
    list_max_bytes: int
    # Bytes of events one replay may send (at most half the send queue: see ``from_options``).
    replay_max_bytes: int
    max_frame_values: int
    metrics_enabled: bool
    metrics_token: str | None
    # The frame limiter's settings (its engine and key), which the channel limiters reuse;
    # None when rate limiting is off.
    rate_limit: Mapping[str, Any] | None
    max_channels_per_connection: int
    presence_timeout: float
    channel_rates: Mapping[str, int]
    max_subscriptions_per_ip: int | None
    max_filter_bytes_per_ip: int | None
    max_subscriptions_per_user: int | None
    max_filter_bytes_per_user: int | None

    @classmethod
    def from_options(
        cls,
        *,
        port: int = 3001,
        host: str = "127.0.0.1",
        path: str = "/",
        rate_limit: Mapping[str, Any] | None = None,
        heartbeat_interval: float | None = 30.0,
        max_message_size: int = 1 << 20,
        max_queue_bytes: int = 1 << 20,
        compression: bool = False,
        auth_timeout: float = 5.0,
        header_timeout: float = 10.0,
        max_connections_per_ip: int | None = 1024,
        max_unauthenticated_per_ip: int | None = 64,
        max_concurrent_requests: int = 8,
        filter_limits: Mapping[str, int] | FilterLimits | None = None,
        max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS,
        list_scan_limit: int = DEFAULT_LIST_SCAN_LIMIT,
        list_max_bytes: int = DEFAULT_LIST_MAX_BYTES,
        replay_max_bytes: int = DEFAULT_REPLAY_MAX_BYTES,
        max_frame_values: int = DEFAULT_MAX_FRAME_VALUES,
        metrics: bool | Mapping[str, Any] = False,
        max_channels_per_connection: int = DEFAULT_MAX_CHANNELS_PER_CONNECTION,
        presence_timeout: float = DEFAULT_PRESENCE_TIMEOUT,
        channel_rate_limit: Mapping[str, int] | None = None,
        max_subscriptions_per_ip: int | None = DEFAULT_MAX_SUBSCRIPTIONS_PER_IP,
        max_filter_bytes_per_ip: int | None = DEFAULT_MAX_FILTER_BYTES_PER_IP,
        max_subscriptions_per_user: int | None = DEFAULT_MAX_SUBSCRIPTIONS_PER_USER,
        max_filter_bytes_per_user: int | None = DEFAULT_MAX_FILTER_BYTES_PER_USER,
    ) -> Settings:
        """Every option checked, each with the same error shape (``NAME must be WHAT, got
        VALUE``, ValueError)."""
        max_queue_bytes = positive_int("max_queue_bytes", max_queue_bytes)
        enabled = rate_limit and rate_limit.get("enabled", True)
        rate = MappingProxyType(dict(rate_limit)) if rate_limit and enabled else None
        return cls(
            host=host,
            port=port,
            path=path if path.startswith("/") else "/" + path,
            heartbeat_interval=optional_positive_float("heartbeat_interval", heartbeat_interval),
            # 0 would mean "no limit" to aiohttp's reader: a size must be at least one byte.
            max_message_size=positive_int("max_message_size", max_message_size),
            max_queue_bytes=max_queue_bytes,
            compression=bool(compression),
            auth_timeout=positive_float("auth_timeout", auth_timeout),
            header_timeout=positive_float("header_timeout", header_timeout),
            max_connections_per_ip=optional_positive_int(
                "max_connections_per_ip", max_connections_per_ip
            ),
            max_unauthenticated_per_ip=optional_positive_int(
                "max_unauthenticated_per_ip", max_unauthenticated_per_ip
            ),
            max_concurrent_requests=positive_int(
                "max_concurrent_requests", max_concurrent_requests
            ),
            filter_limits=FilterLimits.from_config(filter_limits),
            max_subscriptions=positive_int("max_subscriptions", max_subscriptions),
            list_scan_limit=positive_int("list_scan_limit", list_scan_limit),
            list_max_bytes=positive_int("list_max_bytes", list_max_bytes),
            # A replay goes out through the send queue, beside the frames held meanwhile: one
            # that could not fit would close the client with 4408, again at every reconnect.
            replay_max_bytes=min(
                positive_int("replay_max_bytes", replay_max_bytes), max_queue_bytes // 2
            ),
            max_frame_values=positive_int("max_frame_values", max_frame_values),
            metrics_enabled=bool(metrics),
            metrics_token=_metrics_token(metrics),
            rate_limit=rate,
            max_channels_per_connection=positive_int(
                "max_channels_per_connection", max_channels_per_connection
            ),
            presence_timeout=number_in("presence_timeout", presence_timeout, 0.3, 3600),
            channel_rates=MappingProxyType(_channel_rates(channel_rate_limit)),
            max_subscriptions_per_ip=optional_positive_int(
                "max_subscriptions_per_ip", max_subscriptions_per_ip
            ),
            max_filter_bytes_per_ip=optional_positive_int(
                "max_filter_bytes_per_ip", max_filter_bytes_per_ip
            ),
            max_subscriptions_per_user=optional_positive_int(
                "max_subscriptions_per_user", max_subscriptions_per_user
            ),
            max_filter_bytes_per_user=optional_positive_int(
                "max_filter_bytes_per_user", max_filter_bytes_per_user
            ),
        )
