"""The change record announced after every durable write."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from typing import Any, Literal

EventKind = Literal["insert", "update", "delete"]

_FIELDS = ("resource", "event", "record", "previous", "timestamp", "version", "offset", "epoch",
           "etag")  # fmt: skip


class Change:
    """One durable write. ``record`` is the record after the write (the deleted one for delete);
    ``previous`` is the record before it (update and delete). Receivers must not mutate them.

    Immutable, compared field by field, like a frozen dataclass of its nine fields. A plain
    class with ``__slots__``: one is built on every write, and a frozen dataclass's ``__init__``
    costs three times as much (it goes through ``object.__setattr__`` per field)."""

    __slots__ = (*_FIELDS, "_unplaced")
    __match_args__ = ("resource", "event", "record", "previous", "timestamp", "version", "offset",
                      "epoch", "etag")  # fmt: skip

    resource: str
    event: EventKind
    record: dict[str, Any]
    previous: dict[str, Any] | None
    timestamp: int  # epoch milliseconds
    # The record's system version after this write (1 on insert, +1 per update; the deleted
    # record's version for delete). 0 only for changes built by hand in tests.
    version: int
    # Stream position, set by the broker when the change is appended to its resource's stream
    # (``None`` until then): ``offset`` strictly increases within ``epoch``.
    offset: int | None
    epoch: str | None
    # The stored object's ETag after this write (the deleted object's for delete), when known:
    # a store event feed (``s3db watch``) recognises the writes the stream already carried.
    etag: str | None
    _unplaced: bool  # built by the core for one publish: the broker may place it in place

    def __init__(
        self,
        resource: str,
        event: EventKind,
        record: dict[str, Any],
        previous: dict[str, Any] | None,
        timestamp: int,
        version: int = 0,
        offset: int | None = None,
        epoch: str | None = None,
        etag: str | None = None,
    ) -> None:
        _set_resource(self, resource)
        _set_event(self, event)
        _set_record(self, record)
        _set_previous(self, previous)
        _set_timestamp(self, timestamp)
        _set_version(self, version)
        _set_offset(self, offset)
        _set_epoch(self, epoch)
        _set_etag(self, etag)
        _set_unplaced(self, False)

    @classmethod
    def for_stream(
        cls,
        resource: str,
        event: EventKind,
        record: dict[str, Any],
        previous: dict[str, Any] | None,
        timestamp: int,
        version: int,
        etag: str | None = None,
    ) -> Change:
        """A change the core hands to its broker once, right after the write: the broker's
        ``positioned`` gives this very object its position instead of copying it."""
        change = cls(resource, event, record, previous, timestamp, version, None, None, etag)
        _set_unplaced(change, True)
        return change

    def positioned(self, offset: int, epoch: str) -> Change:
        """This change at ``offset`` in ``epoch``: the change itself when it was built by
        ``for_stream`` and has no position yet (no copy on the write path), else a copy, so a
        change someone else holds never changes under them."""
        if self._unplaced:
            _set_unplaced(self, False)
            _set_offset(self, offset)
            _set_epoch(self, epoch)
            return self
        return Change(self.resource, self.event, self.record, self.previous, self.timestamp,
                      self.version, offset, epoch, self.etag)  # fmt: skip

    def _values(self) -> tuple[Any, ...]:
        return (self.resource, self.event, self.record, self.previous, self.timestamp,
                self.version, self.offset, self.epoch, self.etag)  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS)
        return f"Change({inner})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Change, self._values())


# The slots' own setters: they bypass the __setattr__ that keeps a Change immutable.
(_set_resource, _set_event, _set_record, _set_previous, _set_timestamp, _set_version,
 _set_offset, _set_epoch, _set_etag, _set_unplaced) = (
    getattr(Change, name).__set__ for name in Change.__slots__
)  # fmt: skip
