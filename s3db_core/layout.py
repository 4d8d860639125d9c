"""``KeyLayout``: where one resource's objects live in the store, and the listing cursors.

``resource=<name>/data/id=<id>`` holds a record; ``resource=<name>/partition=<p>/<f1>=<v1>/.../
id=<id>`` is an empty-bodied reference to it in partition ``p`` (its body the time it was
written, in ms, so repair can tell a write in flight from a reference left behind). The storage
client adds the connection's own prefix. ``Resource`` writes and reads through this layout, and
``repair`` checks a store against it.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson

from .errors import ValidationError

_UNQUOTED = re.compile(r"[A-Za-z0-9_.~-]+")  # what quote(safe="") leaves as it is


def partition_value(value: Any) -> str:
    """A field's value as it appears in a partition reference's key."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    if _UNQUOTED.fullmatch(text):
        return text  # the common case, at half the cost of quote()
    return quote(text, safe="")


class KeyLayout:
    """The keys of one resource's records and partition references."""

    __slots__ = ("base", "data_prefix", "partition_prefix", "record_prefix", "partitions")

    def __init__(self, name: str, partitions: Mapping[str, list[str]]) -> None:
        self.base = f"resource={name}/"
        self.data_prefix = f"{self.base}data/"
        self.record_prefix = f"{self.data_prefix}id="  # then the record's id
        self.partition_prefix = f"{self.base}partition="
        # partition name -> its fields, sorted (what a reference's key lists, in that order)
        self.partitions = partitions

    def record_key(self, id: str) -> str:
        return f"{self.record_prefix}{id}"

    def partition_keys(self, record: dict[str, Any]) -> dict[str, str]:
        """partition name -> the key of ``record``'s reference in it (partitions whose fields
        the record lacks are left out)."""
        keys = {}
        for pname, fields in self.partitions.items():
            values = [record.get(f) for f in fields]
            if any(v is None for v in values):
                continue
            path = "/".join(f"{f}={partition_value(v)}" for f, v in zip(fields, values, strict=True))
            keys[pname] = f"{self.partition_prefix}{pname}/{path}/id={record['id']}"
        return keys

    def reference_parts(self, key: str) -> list[str]:
        """A reference key's parts after the prefix: ``[p, "f1=v1", ..., "id=ID"]``."""
        return key[len(self.partition_prefix) :].split("/")

    @staticmethod
    def reference_body() -> bytes:
        """A partition reference holds the time it was written (ms), so repair can tell a
        reference of a write in flight from one left behind."""
        return str(int(time.time() * 1000)).encode()


def encode_cursor(last_id: str, order: str) -> str:
    """The cursor of a listing in ``order`` that continues after ``last_id``."""
    return base64.urlsafe_b64encode(orjson.dumps({"after": last_id, "order": order})).decode()


def decode_cursor(cursor: str, order: str) -> str:
    """The id a cursor continues after; ValidationError for one this listing did not return."""
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        after, cursor_order = data["after"], data["order"]
        if not isinstance(after, str) or cursor_order != order:
            raise ValueError
        return after
    except Exception:
        raise ValidationError(
            [{"field": "cursor", "rule": "cursor", "message": "cursor is not one this listing returned"}]
        ) from None
