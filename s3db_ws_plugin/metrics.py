"""Prometheus metrics of one plugin, in its own registry (two plugins in a process never clash).

Served as text at ``GET /metrics``. Connection and subscription gauges read live counts when
scraped; counters are bumped by the plugin (once per change for fan-out, not per receiver).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

FANOUT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class Metrics:
    """The plugin's counters, gauges and the fan-out latency histogram."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, connections: Callable[[], int], subscriptions: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Gauge("s3db_ws_connections", "Open WebSocket connections", registry=r).set_function(
            connections
        )
        Gauge("s3db_ws_subscriptions", "Active subscriptions", registry=r).set_function(
            subscriptions
        )
        self.frames_in = Counter("s3db_ws_frames_received", "Frames received", registry=r)
        self.frames_out = Counter("s3db_ws_frames_sent", "Frames sent (replies and events)", registry=r)
        self.errors = Counter("s3db_ws_errors", "Error frames sent, by code", ["code"], registry=r)
        self.events = Counter(
            "s3db_ws_changes", "Changes fanned out, by resource and event", ["resource", "event"],
            registry=r,
        )
        self.closes = Counter(
            "s3db_ws_server_closes", "Connections closed by the server, by close code", ["code"],
            registry=r,
        )
        self.fanout_seconds = Histogram(
            "s3db_ws_fanout_seconds", "Time to route and queue one change to every receiver",
            buckets=FANOUT_BUCKETS, registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
