"""The storage client contract every backend implements, plus request counters.

A storage client is an object store with S3 semantics: flat keys listed in UTF-8 byte order,
user metadata (str -> str, keys lower-case ASCII), an opaque ETag per object version, and
conditional writes. Backends are found through the ``s3db.storage`` entry-point group by URL
scheme; the factory is called as ``factory(url)`` with the whole connection string.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class ObjectNotFound(Exception):
    """The key does not exist (S3 NoSuchKey / 404)."""


class PreconditionFailed(Exception):
    """A conditional write or delete lost: If-None-Match found an object, or If-Match a newer one."""


@dataclass(slots=True)
class StoredObject:
    key: str
    body: bytes
    metadata: dict[str, str]
    etag: str


@dataclass(slots=True)
class ListPage:
    keys: list[str]
    # Pass back as ``start_after`` (S3 StartAfter) to continue; None when the listing is complete.
    next_start_after: str | None
    # Each key's ETag (same order as ``keys``) where the store's listing gives it (S3 and memory
    # do); None otherwise. The record cache's sweep compares them.
    etags: list[str] | None = None


@dataclass
class RequestCounter:
    """Counts store requests by kind: PUT, GET, HEAD, LIST, DELETE."""

    counts: Counter = field(default_factory=Counter)

    def add(self, kind: str, n: int = 1) -> None:
        self.counts[kind] += n

    def snapshot(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if v}

    def reset(self) -> None:
        self.counts.clear()

    def __getitem__(self, kind: str) -> int:
        return self.counts[kind]


def full_prefix(prefix: str) -> str:
    """The string a client prepends to every key: "" or "some/prefix/"."""
    return f"{prefix}/" if prefix else ""


def normalize_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """A copy of ``metadata`` as S3 stores it: keys lower-cased; non-ASCII values rejected."""
    out = {k.lower(): v for k, v in metadata.items()}
    if not ("".join(out).isascii() and "".join(out.values()).isascii()):
        for k, v in out.items():
            if not (k.isascii() and v.isascii()):
                raise ValueError(f"user metadata must be ASCII (S3 headers): {k!r}")
    return out


@runtime_checkable
class StorageClient(Protocol):
    """Async object-store client. Every method counts the requests it makes in ``requests``."""

    requests: RequestCounter
    # Key prefix from the connection string ("" or "some/prefix", no trailing slash). The client
    # applies it: keys passed to and returned by the methods are relative to it, so callers
    # never prepend it themselves (it is exposed for messages and tests).
    prefix: str

    def describe(self) -> str:
        """Endpoint and bucket for messages and logs; never credentials."""

    async def connect(self) -> None:
        """Open sessions and check the bucket exists; raise StorageError if unreachable."""

    async def close(self) -> None:
        """Release sessions and connections."""

    async def put(
        self,
        key: str,
        body: bytes,
        metadata: dict[str, str],
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/octet-stream",
    ) -> str:
        """Write one object (1 PUT) and return its new ETag.

        ``if_none_match=True`` creates only (PreconditionFailed if the key exists);
        ``if_match=etag`` replaces only that version (PreconditionFailed if it changed or is gone).
        """

    async def get(self, key: str) -> StoredObject:
        """Read body and metadata (1 GET); ObjectNotFound if missing."""

    async def head(self, key: str) -> StoredObject:
        """Read metadata only (1 HEAD, body is b""); ObjectNotFound if missing."""

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete one object (1 DELETE); deleting a missing key is not an error.

        ``if_match=etag`` deletes only that version (PreconditionFailed if it changed or is gone).
        """

    async def list(
        self, prefix: str, *, start_after: str | None = None, max_keys: int = 1000
    ) -> ListPage:
        """List up to ``max_keys`` keys under ``prefix`` in byte order after ``start_after`` (1 LIST).

        ``next_start_after`` is the last key of the page when more keys follow, else None.
        """

    # Optional: ``def key_problem(self, key: str) -> str | None`` says why ``key`` cannot be
    # stored (too long for the store), or None; the core asks before writing. Without it, keys
    # are held to S3's limit (see ``s3_key_problem``).
    #
    # Optional: ``async def get_many(self, keys: list[str]) -> list[StoredObject | None]`` reads
    # a batch (1 GET per key, counted so; None for a missing key). A client whose reads finish
    # without waiting (memory) offers it so a listing needs no task per key; without it the
    # resource issues concurrent ``get`` calls.


S3_MAX_KEY_BYTES = 1024
S3_MAX_SEGMENT_BYTES = 255


def s3_key_problem(full_key: str) -> str | None:
    """S3 keys are at most 1,024 bytes of UTF-8 (prefix included); servers that keep objects as
    files (SeaweedFS, MinIO) also need every ``/``-separated segment within 255 bytes."""
    if len(full_key) <= S3_MAX_SEGMENT_BYTES and full_key.isascii():
        return None  # the common case: nothing can be over either limit
    size = len(full_key.encode("utf-8", "surrogatepass"))
    if size > S3_MAX_KEY_BYTES:
        return f"its key would be {size} bytes, over the store's {S3_MAX_KEY_BYTES}-byte key limit"
    longest = max(len(seg.encode("utf-8", "surrogatepass")) for seg in full_key.split("/"))
    if longest > S3_MAX_SEGMENT_BYTES:
        return f"a key segment would be {longest} bytes, over the {S3_MAX_SEGMENT_BYTES}-byte segment limit"
    return None


def body_etag(body: bytes) -> str:
    """The ETag S3 gives a single-part object: the quoted MD5 of its body, whatever its metadata.

    The local backends use it too, so code that relies on ETags meets S3's behaviour everywhere.
    """
    return f'"{hashlib.md5(body, usedforsecurity=False).hexdigest()}"'
