"""S3 Event Notifications delivered to an SQS queue (AWS, or any S3 that sends them).

``sqs://HOST[:PORT]/ACCOUNT/QUEUE[?region=us-east-1&http=1&wait=10]``: the queue's URL with
``sqs`` for its scheme (``http=1`` for a plain-HTTP endpoint such as a local emulator).
Credentials come from the usual AWS chain (environment, profile, instance role), never from the
URL. The bucket must send ``s3:ObjectCreated:*`` and ``s3:ObjectRemoved:*`` to the queue.

What SQS gives: at-least-once delivery, in no particular order, and no position: the queue
keeps each message (its retention, 4 days by default) until the watcher deletes it after
handling it (``commit``), so a watcher that was down reads what it missed, and what stays
longer than the retention is lost without a trace (say so, and keep the watcher up). Events
carry the key and, for writes, the ETag; never the record (it is read). As the order is lost,
``ordered`` is False: the watcher checks that a deleted record is still gone before it
announces its deletion.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit

import orjson
from aiobotocore.session import get_session

from ..log import get_logger
from . import FeedEvent

log = get_logger("s3db.feed.sqs")

MAX_BODY = 256 << 10  # SQS's own limit on a message


class SqsFeed:
    ordered = False

    def __init__(self, url: str, bucket: str, prefix: str) -> None:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        path = parts.path.strip("/").split("/")
        if parts.scheme != "sqs" or not parts.hostname or len(path) != 2 or not all(path):
            raise ValueError("the sqs feed URL is sqs://HOST[:PORT]/ACCOUNT/QUEUE")
        scheme = "http" if query.get("http") in ("1", "true") else "https"
        self.endpoint = f"{scheme}://{parts.netloc.rpartition('@')[2]}"
        self.queue_url = f"{self.endpoint}/{path[0]}/{path[1]}"
        self.region = query.get("region") or "us-east-1"
        self.wait = max(0, min(20, int(query.get("wait", "10"))))
        self.bucket = bucket
        self.root = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.malformed = 0
        self._client: Any = None
        self._stack: AsyncExitStack | None = None
        self._closed = False

    def _skip(self, why: str) -> None:
        self.malformed += 1
        log.error("feed_message_skipped", feed="sqs", why=why, error_id=secrets.token_hex(8))

    def parse(self, body: str, handle: str) -> list[FeedEvent]:
        """The events of one message; the last one carries ``handle`` (deleted once handled)."""
        if len(body) > MAX_BODY:
            raise ValueError("message too large")
        message = orjson.loads(body)
        if not isinstance(message, dict):
            raise ValueError("not an object")
        if message.get("Event") == "s3:TestEvent":
            return [FeedEvent("put", "", None, handle)]  # nothing to do but delete it
        out: list[FeedEvent] = []
        for record in message["Records"]:
            s3 = record["s3"]
            if s3["bucket"]["name"] != self.bucket:
                continue
            key = unquote_plus(s3["object"]["key"])
            if not key.startswith(self.root):
                continue
            name = str(record["eventName"])
            etag = s3["object"].get("eTag")
            etag = f'"{etag}"' if isinstance(etag, str) and etag else None
            if name.startswith("ObjectCreated:"):
                out.append(FeedEvent("put", key[len(self.root):], etag, ""))
            elif name.startswith("ObjectRemoved:"):
                out.append(FeedEvent("delete", key[len(self.root):], None, ""))
        if not out:
            return [FeedEvent("put", "", None, handle)]
        last = out[-1]
        out[-1] = FeedEvent(last.kind, last.key, last.etag, handle, last.created)
        return out

    async def _connect(self) -> Any:
        if self._client is None:
            stack = AsyncExitStack()
            self._client = await stack.enter_async_context(
                get_session().create_client("sqs", region_name=self.region,
                                            endpoint_url=self.endpoint)  # fmt: skip
            )
            self._stack = stack
        return self._client

    async def events(self, since: str | None) -> AsyncIterator[FeedEvent]:
        delay = 0.2
        while not self._closed:
            try:
                client = await self._connect()
                reply = await client.receive_message(
                    QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=self.wait
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("feed_unreachable", feed="sqs", error=type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.2
            for message in reply.get("Messages", []):
                handle = message.get("ReceiptHandle", "")
                try:
                    events = self.parse(message["Body"], handle)
                except (KeyError, TypeError, ValueError, AttributeError):
                    self._skip("not an S3 event notification")
                    await self.commit(handle)
                    continue
                for event in events:
                    yield event

    async def commit(self, position: str) -> None:
        """Delete the message whose handling ended at ``position`` (it is not sent again)."""
        if not position or self._client is None:
            return
        try:
            await self._client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=position)
        except Exception as exc:  # it comes back after its visibility timeout: handled twice
            log.warning("feed_commit_failed", feed="sqs", error=type(exc).__name__)

    async def close(self) -> None:
        self._closed = True
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()


__all__ = ["SqsFeed"]
