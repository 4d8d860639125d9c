"""SeaweedFS's filer metadata feed: every create, update, rename and delete the filer applies,
whoever made it (the S3 gateway, the filer's HTTP API, a mount), in the filer's order.

``seaweedfs://HOST:FILER_PORT`` (optionally ``?weed=/path/to/weed``). The feed runs
``weed filer.meta.tail`` (the filer's own subscription client, shipped with SeaweedFS) on the
bucket's folder and reads its JSON messages: no protocol stubs to generate or keep in step with
the filer, and the same binary that serves the store reads its feed. A message's ``tsNs`` is its
position; ``-timeAgo`` resumes from it (a margin before, the already-seen messages skipped).

Gaps: the subscription ends when the filer stops (``weed`` exits with it), and a filer that
restarted may have lost the tail of its metadata log that it had not flushed; so every end of
the subscription, and every change of the filer's signature (a new filer process) between two
messages, is reported as a ``gap``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from ..log import get_logger
from . import FeedEvent

log = get_logger("s3db.feed.seaweedfs")

MAX_MESSAGE = 8 << 20  # bytes of one JSON message; a larger one is skipped as malformed
RESUME_MARGIN_NS = 2_000_000_000  # start this much before the saved position (clock skew)
ETAG_KEY = "Seaweed-X-Amz-ETag"


def find_weed(explicit: str | None = None) -> str:
    """The ``weed`` binary: ``explicit``, else ``$PATH``, else next to this Python."""
    if explicit:
        return explicit
    found = shutil.which("weed")
    if found:
        return found
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    raise ValueError("the seaweedfs feed needs the 'weed' binary on PATH (or ?weed=/path/to/weed)")


def _etag(entry: dict[str, Any]) -> str | None:
    """The S3 ETag SeaweedFS gives the object (quoted), from its extended attributes or MD5."""
    try:
        extended = entry.get("extended") or {}
        if isinstance(extended.get(ETAG_KEY), str):
            text = base64.b64decode(extended[ETAG_KEY]).decode("ascii").strip('"')
            if text:
                return f'"{text}"'
        md5 = (entry.get("attributes") or {}).get("md5")
        if isinstance(md5, str) and md5:
            return f'"{base64.b64decode(md5).hex()}"'
    except (binascii.Error, UnicodeDecodeError, AttributeError):
        return None
    return None


class SeaweedFSFeed:
    """The filer metadata feed of one bucket (and key prefix)."""

    def __init__(self, url: str, bucket: str, prefix: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "seaweedfs" or not parts.hostname or not parts.port:
            raise ValueError("the seaweedfs feed URL is seaweedfs://HOST:FILER_PORT")
        query = dict(parse_qsl(parts.query))
        self.filer = f"{parts.hostname}:{parts.port}"
        self.weed = find_weed(query.get("weed"))
        self.root = f"/buckets/{bucket}/" + (f"{prefix.strip('/')}/" if prefix.strip("/") else "")
        # Without a saved position the feed starts here, not when weed's subscription is up:
        # a write made once the feed exists is never missed for being early.
        self.created_ns = time.time_ns()
        self._process: asyncio.subprocess.Process | None = None
        self._closed = False
        self.malformed = 0
        self.restarts = 0

    # -- parsing ----------------------------------------------------------------------------
    def _key(self, directory: str, name: str) -> str | None:
        path = f"{directory.rstrip('/')}/{name}"
        return path[len(self.root):] if path.startswith(self.root) else None

    def parse(self, message: dict[str, Any], position: str) -> list[FeedEvent]:
        """The events of one feed message (a rename is a delete and a put); KeyError,
        TypeError or ValueError if it is not a metadata message."""
        note = message["eventNotification"]
        directory = message["directory"]
        old, new = note.get("oldEntry"), note.get("newEntry")
        if not isinstance(directory, str) or (old is None and new is None):
            raise ValueError("a message with neither an old nor a new entry")
        out: list[FeedEvent] = []
        old_key = new_key = None
        if old is not None and not old.get("isDirectory"):
            old_key = self._key(directory, old["name"])
        if new is not None and not new.get("isDirectory"):
            new_key = self._key(note.get("newParentPath") or directory, new["name"])
        if old_key is not None and old_key != new_key:
            out.append(FeedEvent("delete", old_key, _etag(old), position))
        if new_key is not None:
            created = old is None or old_key != new_key
            out.append(FeedEvent("put", new_key, _etag(new), position, created))
        return out

    # -- the subscription -------------------------------------------------------------------
    async def _start(self, since_ns: int | None) -> asyncio.subprocess.Process:
        args = [self.weed, "filer.meta.tail", f"-filer={self.filer}", f"-pathPrefix={self.root}"]
        if since_ns is not None:
            ago = max(time.time_ns() - since_ns + RESUME_MARGIN_NS, 1)
            args.append(f"-timeAgo={ago}ns")
        return await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=1 << 20,
        )  # fmt: skip

    async def _drain_stderr(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            log.debug("weed_says", line=line[:500].decode(errors="replace").rstrip())

    async def _messages(self, process: asyncio.subprocess.Process) -> AsyncIterator[Any]:
        """Each top-level JSON object weed prints (indented: it ends with a line ``}``); a
        message that is too large or not JSON is counted, logged and skipped."""
        assert process.stdout is not None
        lines: list[bytes] = []
        size = 0
        broken = False
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:  # one line longer than the reader's limit
                broken = True
                continue
            if not line:
                return
            if not broken:
                size += len(line)
                if size > MAX_MESSAGE:
                    broken, lines = True, []
                else:
                    lines.append(line)
            if line.rstrip(b"\r\n") != b"}":
                continue
            if broken:
                self._skip("message too large")
            else:
                try:
                    yield orjson.loads(b"".join(lines))
                except orjson.JSONDecodeError:
                    self._skip("not JSON")
            lines, size, broken = [], 0, False

    def _skip(self, why: str) -> None:
        self.malformed += 1
        log.error("feed_message_skipped", feed="seaweedfs", why=why, error_id=secrets.token_hex(8))

    async def events(self, since: str | None) -> AsyncIterator[FeedEvent]:
        last_ns: int | None = self.created_ns
        signature: str | None = None
        if since:
            saved_ns, _, saved_sig = since.partition(".")
            last_ns, signature = int(saved_ns), (saved_sig or None)
        delay = 0.2
        lost = False  # a gap was reported for the current outage
        while not self._closed:
            process = self._process = await self._start(last_ns)
            stderr = asyncio.get_running_loop().create_task(self._drain_stderr(process))
            try:
                async for message in self._messages(process):
                    try:
                        ts = int(message["tsNs"])
                        sigs = message["eventNotification"].get("signatures") or []
                        sig = str(sigs[0]) if sigs else signature
                        position = f"{ts}.{sig or ''}"
                        if last_ns is not None and ts <= last_ns:
                            continue  # before the saved position (the resume margin)
                        events = self.parse(message, position)
                    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
                        self._skip("not a metadata message")
                        continue
                    delay = 0.2
                    lost = False
                    if signature is not None and sig is not None and sig != signature:
                        yield FeedEvent("gap", "", None, f"{last_ns or ts}.{sig}")  # new filer
                    last_ns, signature = ts, sig
                    for event in events:
                        yield event
            finally:
                if process.returncode is None:
                    process.kill()
                await process.wait()
                stderr.cancel()
            if self._closed:
                return
            self.restarts += 1
            if not lost:  # said at once, not when the filer answers again: subscribers reload
                lost = True
                yield FeedEvent("gap", "", None, f"{last_ns or time.time_ns()}.{signature or ''}")
            log.warning("feed_ended", feed="seaweedfs", filer=self.filer, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        self._closed = True
        process = self._process
        if process is not None and process.returncode is None:
            try:
                process.kill()
            except ProcessLookupError:
                pass
            await process.wait()


__all__ = ["SeaweedFSFeed", "find_weed"]
