"""The fan-out of durable changes: the ``s3db_change`` hook's work (positions, the stale-version
gate, who receives the change), the ``event`` frame built and serialized once, and its delivery
to each receiver (held or guarded while one of its subscriptions resumes)."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

from s3db_core import Change
from s3db_core.log import get_logger

from .connection import Connection, text_frame
from .guards import ResourcePolicy
from .protocol import encode

if TYPE_CHECKING:
    from .server import Server

log = get_logger("s3db.ws")


def event_frame(change: Change, policy: ResourcePolicy, leave: bool = False) -> dict[str, Any]:
    """The ``event`` frame of ``change`` (protected fields stripped), or its ``leave`` frame
    (the record's id, nothing of its new content): the same for every receiver, built once."""
    return {
        "type": "event",
        "resource": change.resource,
        "event": "leave" if leave else change.event,
        "data": {"id": change.record.get("id")} if leave else policy.protected.strip(change.record),
        "timestamp": change.timestamp,
        "version": change.version,
        "offset": change.offset,
        "epoch": change.epoch,
    }



class FanOut:
    """Fans one plugin's changes out to its connections."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def change(self, change: Change) -> None:
        """Fan a durable change out (synchronously, so commit order per resource holds)."""
        policy = self.server.policies.get(change.resource)
        if policy is None or not self.server.serving:
            return
        started = time.perf_counter()
        try:
            resumer = self.server.resumer
            resumer.positions.advance(change)
            if not resumer.gate.admit(change):  # older than a version already fanned out
                return
            receivers, leaving = self.server.registry.deliveries(change, policy)
            if receivers:
                self._deliver(change, receivers, event_frame(change, policy), policy)
            if leaving:  # the record left their access: its id, nothing of its new content
                self._deliver(change, leaving, event_frame(change, policy, leave=True), policy)
        except Exception:  # the write is durable: never fail it because delivery broke
            log.exception(
                "change fan-out failed",
                error_id=secrets.token_hex(8),
                resource=change.resource,
                change_event=change.event,
            )
            return
        self.server.metrics.event(change.resource, change.event).inc()
        self.server.metrics.fanout_seconds.observe(time.perf_counter() - started)

    def _deliver(
        self,
        change: Change,
        receivers: list[Connection],
        event: dict[str, Any],
        policy: ResourcePolicy,
    ) -> None:
        """Send one event frame, serialized once, to each receiver; a receiver that fails is
        logged with an error id and never keeps the frame from the others. A connection whose
        subscription is resuming gets it after the replay (held), or not at all when a replay
        or snapshot of it already did (guarded)."""
        payload = encode(event)
        frame = text_frame(payload)
        resumer = self.server.resumer
        holds, guards = resumer.holds, resumer.guards
        for conn in receivers:
            try:
                if holds and conn in holds:
                    holds[conn].add(change, payload)
                elif guards and conn in guards and resumer.guarded(conn, change, policy):
                    continue
                else:
                    conn.send(payload, frame)
            except Exception:
                log.exception(
                    "event delivery failed",
                    error_id=secrets.token_hex(8),
                    resource=change.resource,
                    receiver=conn.client_id,
                )
        self.server.metrics.frames_out.inc(len(receivers))
