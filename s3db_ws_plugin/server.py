"""``Server``: what the parts of one plugin share, and the only view of it they get.

Handlers, session auth, resume, recheck, channels, the session loop and the fan-out each receive
this object (never the plugin): the database served, the resource policies, the subscription
registry, the open connections, ``send``/``send_error`` (every frame the server sends goes
through them), the metrics, and the settings, holdings and resume machinery they share. It
imports none of them, so none of them imports the plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from s3db_core import Database, Position

from .budgets import Holdings, RedisHoldings
from .guards import ResourcePolicy
from .metrics import Metrics
from .protocol import ProtocolError, encode, error_frame
from .resume import Resumer
from .settings import Settings
from .subscriptions import SubscriptionRegistry

if TYPE_CHECKING:
    from .connection import Connection


class Server:
    """The shared state and services of one plugin (see the module's docstring)."""

    # The database served, set when the plugin starts.
    db: Database

    def __init__(self, settings: Settings, policies: Mapping[str, ResourcePolicy]) -> None:
        self.settings = settings
        self.policies: dict[str, ResourcePolicy] = dict(policies)
        # True from start to stop: no change is fanned out, no session begins, outside it.
        self.serving = False
        # What one address and one user may hold in subscriptions (budgets.py), shared
        # across processes when the rate limiter is the Redis one.
        self.holdings = Holdings(
            max_subscriptions_per_ip=settings.max_subscriptions_per_ip,
            max_filter_bytes_per_ip=settings.max_filter_bytes_per_ip,
            max_subscriptions_per_user=settings.max_subscriptions_per_user,
            max_filter_bytes_per_user=settings.max_filter_bytes_per_user,
            shared=RedisHoldings.from_rate_limit(settings.rate_limit),
        )
        self.connections: set[Connection] = set()
        self.registry = SubscriptionRegistry(release=self.holdings.release)
        self.resumer = Resumer(
            self.registry,
            max_hold_bytes=settings.max_queue_bytes,
            replay_max_bytes=settings.replay_max_bytes,
        )
        self.metrics = Metrics(
            lambda: len(self.connections),
            lambda: len(self.registry),
            lambda: self.db.stats.damaged_records if hasattr(self, "db") else 0,
            lambda: self.db.stats.snapshot() if hasattr(self, "db") else {},
        )

    def send(self, conn: Connection, frame: dict[str, Any]) -> None:
        """Send one server frame to ``conn`` (counted in the metrics)."""
        conn.send(encode(frame))
        self.metrics.frames_out.inc()

    def send_error(self, conn: Connection, error: ProtocolError, request_id: Any = None) -> None:
        """Send an ``error`` frame to ``conn`` (counted by code in the metrics)."""
        self.metrics.error(error.code).inc()
        self.send(conn, error_frame(error, request_id))

    def position_of(self, resource: str) -> dict[str, Any] | None:
        """The position of the last change of ``resource`` this process fanned out (a new
        subscription gets every later one), None before the first."""
        fanned = self.resumer.positions.fanned.get(resource)
        return None if fanned is None else Position(fanned[1], fanned[0]).to_dict()
