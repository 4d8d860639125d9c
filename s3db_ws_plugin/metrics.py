"""Prometheus metrics of one plugin, in its own registry (two plugins in a process never clash).

Served as text at ``GET /metrics``. Connection and subscription gauges read live counts when
scraped; counters are bumped by the plugin (once per change for fan-out, not per receiver).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, Metric

FANOUT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class TallyCounter:
    """An unlabelled counter bumped on every frame: ``inc`` adds to a plain int, moved into a
    prometheus ``Counter`` whenever the registry is collected (``Counter.inc`` takes a lock and
    checks its arguments, several times the cost). Only the event loop's thread bumps it.
    Scraped exactly like the ``Counter`` it wraps (same ``_total`` and ``_created`` samples)."""

    __slots__ = ("counter", "pending")

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.counter = Counter(name, documentation, registry=None)
        self.pending = 0
        registry.register(self)

    def inc(self, amount: int = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.pending += amount

    def describe(self) -> Iterable[Metric]:
        return self.counter.describe()

    def collect(self) -> Iterable[Metric]:
        pending, self.pending = self.pending, 0
        if pending:
            self.counter.inc(pending)
        return self.counter.collect()


def _stat(stats: Callable[[], dict[str, int]], key: str) -> Callable[[], int]:
    return lambda: stats().get(key, 0)


class ReadCounter:
    """A counter kept elsewhere (the database's ``db.stats``), read when the registry is
    collected."""

    def __init__(
        self, name: str, documentation: str, read: Callable[[], int], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation, self.read = name, documentation, read
        registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, value=self.read())]


class LabelCache:
    """The children of a labelled metric, looked up once per label values (``labels()``
    validates and joins its arguments on every call)."""

    __slots__ = ("metric", "_children")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class Metrics:
    """The plugin's counters, gauges and the fan-out latency histogram."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        connections: Callable[[], int],
        subscriptions: Callable[[], int],
        damaged_records: Callable[[], int] = lambda: 0,
        stats: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Gauge("s3db_ws_connections", "Open WebSocket connections", registry=r).set_function(
            connections
        )
        Gauge("s3db_ws_subscriptions", "Active subscriptions", registry=r).set_function(
            subscriptions
        )
        ReadCounter(
            "s3db_damaged_records",
            "Records a listing skipped because they could not be read back (see s3db repair)",
            damaged_records,
            r,
        )
        # The record cache's counters (``Database(cache=...)``; zero when it is off).
        for key, help_ in (
            ("cache_hits", "Reads the record cache answered with no store request"),
            ("cache_misses", "Reads the record cache sent to the store"),
            ("cache_fills_dropped", "Store reads not kept because a change raced them"),
            ("cache_flushes", "Times the record cache was emptied (stream continuity lost)"),
        ):
            ReadCounter(f"s3db_{key}", help_, _stat(stats, key), r)
        Gauge("s3db_cache_bytes", "Bytes held by the record cache", registry=r).set_function(
            lambda: stats().get("cache_bytes", 0)
        )
        self.frames_in = TallyCounter("s3db_ws_frames_received", "Frames received", r)
        self.frames_out = TallyCounter("s3db_ws_frames_sent", "Frames sent (replies and events)", r)
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
        # Cached children of the labelled counters bumped per error frame and per change.
        self.error = LabelCache(self.errors)
        self.event = LabelCache(self.events)

    def render(self) -> bytes:
        return generate_latest(self.registry)
