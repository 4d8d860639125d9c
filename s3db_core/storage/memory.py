"""In-process storage backend: ``memory://name/optional/prefix``.

Stores opened with the same name in one process share their data (a module-level registry of
buckets); ``memory://`` without a name gets a fresh private bucket. Keys are kept in a sorted
list (bisect) so listing costs O(log n + page). Every call is synchronous inside the coroutine,
so conditional writes are atomic without locks. Metadata keys are lower-cased and values must be
ASCII, exactly as S3 would store them, so code tested here behaves the same on a real store.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from s3db_core.storage.base import (
    ListPage,
    ObjectNotFound,
    PreconditionFailed,
    RequestCounter,
    StoredObject,
    body_etag,
    full_prefix,
    normalize_metadata,
    s3_key_problem,
)


@dataclass(slots=True)
class _Bucket:
    objects: dict[str, tuple[bytes, dict[str, str], str]] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)  # sorted; str order == UTF-8 byte order


_BUCKETS: dict[str, _Bucket] = {}


class MemoryStorage:
    """Object store held in this process's memory (the default for demos and benchmarks)."""

    def __init__(self, url: str = "memory://") -> None:
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise ValueError("MemoryStorage needs a memory:// URL")
        self.name = unquote(parts.netloc)
        self.prefix = unquote(parts.path).strip("/")
        self._root = full_prefix(self.prefix)
        self._bucket = _BUCKETS.setdefault(self.name, _Bucket()) if self.name else _Bucket()
        self.requests = RequestCounter()

    def describe(self) -> str:
        return f"memory://{self.name}/{self.prefix}".rstrip("/")

    async def connect(self) -> None:
        """Nothing to open: the bucket lives in this process."""

    async def close(self) -> None:
        """Nothing to release: the data stays for other stores with the same name."""

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
        self.requests.add("PUT")
        full = self._root + key
        bucket = self._bucket
        current = bucket.objects.get(full)
        if if_none_match and current is not None:
            raise PreconditionFailed(key)
        if if_match is not None and (current is None or current[2] != if_match):
            raise PreconditionFailed(key)
        etag = body_etag(body)
        bucket.objects[full] = (bytes(body), normalize_metadata(metadata), etag)
        if current is None:
            insort(bucket.keys, full)
        return etag

    async def get(self, key: str) -> StoredObject:
        self.requests.add("GET")
        return self._read(key, with_body=True)

    async def get_many(self, keys: list[str]) -> list[StoredObject | None]:
        """Read several objects (1 GET each, counted so); None for a missing key.

        The optional batch read of the storage contract: in memory the reads complete at once,
        so the resource needs no task per key.
        """
        self.requests.add("GET", len(keys))
        objects, root = self._bucket.objects, self._root
        out: list[StoredObject | None] = []
        for key in keys:
            found = objects.get(root + key)
            if found is None:
                out.append(None)
            else:
                body, metadata, etag = found
                out.append(StoredObject(key, body, dict(metadata), etag))
        return out

    async def head(self, key: str) -> StoredObject:
        self.requests.add("HEAD")
        return self._read(key, with_body=False)

    def _read(self, key: str, *, with_body: bool) -> StoredObject:
        found = self._bucket.objects.get(self._root + key)
        if found is None:
            raise ObjectNotFound(key)
        body, metadata, etag = found
        return StoredObject(key, body if with_body else b"", dict(metadata), etag)

    def key_problem(self, key: str) -> str | None:
        """The same key limit as S3, so code tested in memory fits a real store."""
        return s3_key_problem(self._root + key)

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        self.requests.add("DELETE")
        full = self._root + key
        bucket = self._bucket
        if if_match is not None:
            current = bucket.objects.get(full)
            if current is None or current[2] != if_match:
                raise PreconditionFailed(key)
        if bucket.objects.pop(full, None) is not None:
            keys = bucket.keys
            del keys[bisect_left(keys, full)]

    async def list(
        self, prefix: str, *, start_after: str | None = None, max_keys: int = 1000
    ) -> ListPage:
        self.requests.add("LIST")
        full_p = self._root + prefix
        keys = self._bucket.keys
        if start_after is not None and self._root + start_after >= full_p:
            i = bisect_right(keys, self._root + start_after)
        else:
            i = bisect_left(keys, full_p)
        cut = len(self._root)
        page: list[str] = []
        etags: list[str] = []
        objects = self._bucket.objects
        n = len(keys)
        while i < n and len(page) < max_keys:
            k = keys[i]
            if not k.startswith(full_p):
                return ListPage(page, None, etags)
            page.append(k[cut:])
            etags.append(objects[k][2])
            i += 1
        more = i < n and keys[i].startswith(full_p)
        return ListPage(page, page[-1] if more and page else None, etags)
