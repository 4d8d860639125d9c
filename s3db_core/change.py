"""The change record announced after every durable write."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

EventKind = Literal["insert", "update", "delete"]


@dataclass(frozen=True, slots=True)
class Change:
    """One durable write. ``record`` is the record after the write (the deleted one for delete);
    ``previous`` is the record before it (update and delete). Receivers must not mutate them."""

    resource: str
    event: EventKind
    record: dict[str, Any]
    previous: dict[str, Any] | None
    timestamp: int  # epoch milliseconds
    # The record's system version after this write (1 on insert, +1 per update; the deleted
    # record's version for delete). 0 only for changes built by hand in tests.
    version: int = 0
    # Stream position, set by the broker when the change is appended to its resource's stream
    # (``None`` until then): ``offset`` strictly increases within ``epoch``.
    offset: int | None = None
    epoch: str | None = None
