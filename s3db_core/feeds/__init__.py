"""Store event feeds: what an object store says about every object written or deleted in it,
whoever wrote it (``s3db watch`` turns them into changes on the broker).

``load_feed(url, bucket=..., prefix=...)`` builds the feed registered in the ``s3db.store_feeds``
entry-point group under the URL's scheme (``seaweedfs://HOST:FILER_PORT``: ``seaweedfs.py``;
``sqs://HOST/ACCOUNT/QUEUE``: ``sqs.py``). A
feed is a class called as ``Feed(url, bucket, prefix)`` that implements ``StoreFeed``: its
``events(since)`` yields ``FeedEvent`` items in the store's order, starting after the position
``since`` (an opaque string a previous event carried; None: from now).

A ``gap`` event says that the feed cannot vouch for what happened since the position before it
(it restarted, lost its connection, or no longer keeps that position): the reader must treat
everything as possibly changed (``s3db watch`` opens a new epoch, so subscribers reload).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from ..plugins import load_entry_point

__all__ = ["FeedEvent", "StoreFeed", "feed_scheme", "load_feed"]

ENTRY_POINT_GROUP = "s3db.store_feeds"
FeedKind = Literal["put", "delete", "gap"]


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One object written (``put``) or deleted, or a ``gap``. ``key`` is relative to the store's
    prefix (as the storage client names it); ``etag`` is the object's S3 ETag (quoted) when the
    feed knows it: the written object's for ``put``, the removed one's for ``delete``.
    ``created`` is True when the feed knows no object was there before the write (None when it
    cannot tell). ``position`` resumes the feed right after this event."""

    kind: FeedKind
    key: str
    etag: str | None
    position: str
    created: bool | None = None


@runtime_checkable
class StoreFeed(Protocol):
    def events(self, since: str | None) -> AsyncIterator[FeedEvent]:
        """The store's events after ``since``, until ``close``; never ends by itself (a feed
        that loses its source reconnects and yields a ``gap``)."""
        ...

    async def close(self) -> None: ...

    # Optional: ``ordered`` (False when events may come in any order: the reader then checks a
    # deleted record is still gone) and ``async commit(position)`` (the reader handled
    # everything up to ``position``: a queue deletes those messages).

    @property
    def malformed(self) -> int:
        """Feed messages skipped because they could not be read."""
        ...


def feed_scheme(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else url.lower()


def load_feed(url: str, *, bucket: str, prefix: str) -> StoreFeed:
    """The feed for ``url`` on the store's ``bucket`` and key ``prefix``."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError("a feed must be a URL such as 'seaweedfs://127.0.0.1:8888'")
    factory = load_entry_point(ENTRY_POINT_GROUP, feed_scheme(url), kind="store feed")
    feed: StoreFeed = factory(url, bucket, prefix)
    return feed
