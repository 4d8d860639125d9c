"""Durable local storage backend: ``file://./relative/dir`` or ``file:///absolute/dir``.

Each key segment is a directory level; the object itself is the file ``<segment>%o`` holding a
4-byte header length, a JSON header (etag, metadata) and the body. Segment names are escaped so
that any key maps to exactly one path, also on case-insensitive file systems: ``[a-z0-9-_.=]``
stay, an upper-case letter ``X`` becomes ``^x``, anything else is %-encoded UTF-8. ``%o`` never
occurs in an escaped name, so objects and directories cannot collide (``a`` and ``a/b`` both
fit). Segments ``""``, ``.`` and ``..`` are rejected (ValueError), so no key leaves the root.

Every call is bounded by ``timeout`` (20 s; ``file://./data?timeout=5``): a hung disk or network
file system gives StorageError instead of a wait without end.

Writes go to a temp file that ``os.replace`` swaps in (atomic; survives a process crash, not a
power loss: there is no fsync). Conditional writes and deletes hold an ``fcntl`` lock on the
directory's ``%lock`` file while they check and swap, which serializes threads and processes
alike. All file IO runs in worker threads (``asyncio.to_thread``) so the event loop never
waits on the disk or on a lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, quote, unquote

import orjson

from s3db_core.errors import DamagedRecordError, StorageError
from s3db_core.storage.base import (
    ListPage,
    ObjectNotFound,
    PreconditionFailed,
    RequestCounter,
    StoredObject,
    body_etag,
    normalize_metadata,
)

T = TypeVar("T")
_OBJ = "%o"
_LOCK = "%lock"
_ESCAPE = re.compile(r"[^a-z0-9\-_.=]")
_UPPER = re.compile(r"\^([a-z])")


def _escape_char(m: re.Match[str]) -> str:
    ch = m.group()
    return f"^{ch.lower()}" if "A" <= ch <= "Z" else quote(ch, safe="")


def _escape(segment: str) -> str:
    return _ESCAPE.sub(_escape_char, segment)


def _unescape(name: str) -> str:
    return unquote(_UPPER.sub(lambda m: m.group(1).upper(), name))


class FileStorage:
    """Object store in a local directory tree; several processes may share one directory."""

    def __init__(self, url: str) -> None:
        if not url.startswith("file://"):
            raise ValueError("FileStorage needs a file:// URL")
        path, _, query = url[len("file://") :].partition("?")
        self.root = Path(unquote(path) or ".").absolute()
        options = {k: v[-1] for k, v in parse_qs(query).items()}
        self.timeout = 20.0
        if "timeout" in options:
            try:
                self.timeout = float(options["timeout"])
            except ValueError:
                self.timeout = -1.0
            if not 0 < self.timeout <= 3600:
                raise ValueError("storage URL option timeout must be a number of seconds in (0, 3600]")
        self.prefix = ""
        self.requests = RequestCounter()
        self._name_max, self._path_max = _fs_limits(self.root)

    def describe(self) -> str:
        return f"file://{self.root}"

    async def connect(self) -> None:
        try:
            await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot open {self.describe()}: {e.strerror}") from e

    async def close(self) -> None:
        """Nothing to release: every call opens and closes its own files."""

    def _path(self, key: str) -> Path:
        *dirs, name = key.split("/")
        for seg in (*dirs, name):
            if seg in ("", ".", ".."):
                raise ValueError(
                    f"key not storable in a file store (empty, . or .. segment): {key!r}"
                )
        return self.root.joinpath(*map(_escape, dirs), _escape(name) + _OBJ)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.to_thread(fn, *args)
        except TimeoutError as e:  # a hung disk or network file system
            raise StorageError(f"{self.describe()}: no answer within the {self.timeout:g} s timeout") from e
        except OSError as e:
            raise StorageError(f"{self.describe()}: {e.strerror or e}") from e

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
        path = self._path(key)
        etag = body_etag(body)
        header = orjson.dumps({"etag": etag, "metadata": normalize_metadata(metadata)})
        self.requests.add("PUT")
        if not await self._run(_write, path, header, bytes(body), if_none_match, if_match):
            raise PreconditionFailed(key)
        return etag

    async def get(self, key: str) -> StoredObject:
        path = self._path(key)
        self.requests.add("GET")
        return await self._read(key, path, True)

    async def head(self, key: str) -> StoredObject:
        path = self._path(key)
        self.requests.add("HEAD")
        return await self._read(key, path, False)

    async def _read(self, key: str, path: Path, with_body: bool) -> StoredObject:
        try:
            found = await self._run(_read, path, with_body)
        except (ValueError, TypeError) as e:  # a truncated or foreign file: not an object of ours
            raise DamagedRecordError(key, f"{self.describe()}: damaged object {key!r}") from e
        if found is None:
            raise ObjectNotFound(key)
        header, body = found
        return StoredObject(key, body, header["metadata"], header["etag"])

    def key_problem(self, key: str) -> str | None:
        """Every escaped key segment must fit the file system's name limit (the object's own
        segment with room for its temp-file suffix) and the whole path its path limit."""
        for seg in key.split("/"):
            if seg in ("", ".", ".."):
                return "it has an empty, . or .. key segment"
        *dirs, name = map(_escape, key.split("/"))
        for seg, room in [(d, 0) for d in dirs] + [(name, len(_OBJ) + _TEMP_SUFFIX)]:
            size = len(seg.encode()) + room
            if size > self._name_max:
                return f"a file name would be {size} bytes, over this file system's {self._name_max}"
        size = len(str(self.root).encode()) + sum(len(s.encode()) + 1 for s in (*dirs, name)) + 40
        if size > self._path_max:
            return f"its path would be {size} bytes, over this file system's {self._path_max}"
        return None

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        path = self._path(key)
        self.requests.add("DELETE")
        if not await self._run(_delete, path, if_match):
            raise PreconditionFailed(key)

    async def remove_temp_files(self, older_than: float, *, dry_run: bool = False) -> int:
        """Remove temp files a killed writer left behind (older than ``older_than`` seconds, so a
        write in progress keeps its own); returns how many there were."""
        return await self._run(_remove_temp_files, self.root, older_than, dry_run)

    async def list(
        self, prefix: str, *, start_after: str | None = None, max_keys: int = 1000
    ) -> ListPage:
        self.requests.add("LIST")
        keys = await self._run(_list, self.root, prefix, start_after or "", max_keys + 1)
        more = len(keys) > max_keys
        del keys[max_keys:]
        return ListPage(keys, keys[-1] if more and keys else None)


_TEMP_SUFFIX = len(".") + 32 + len("%t")  # a temp file is "<name>.<uuid hex>%t"
_TEMP_NAME = re.compile(r"%o\.[0-9a-f]{1,32}%t\Z")  # "<object file>.<hex>%t", nothing else


def _fs_limits(root: Path) -> tuple[int, int]:
    """NAME_MAX and PATH_MAX of the file system holding ``root`` (255 / 4096 when unknown)."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return os.pathconf(probe, "PC_NAME_MAX"), os.pathconf(probe, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096


def _read(path: Path, with_body: bool) -> tuple[dict, bytes] | None:
    """(header, body) of an object file, None if missing; ValueError if it is damaged."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(4), "big")
            header = orjson.loads(f.read(size))
            if not isinstance(header, dict) or not isinstance(header.get("metadata"), dict):
                raise ValueError("not an object header")
            return header, f.read() if with_body else b""
    except FileNotFoundError:
        return None


def _write(
    path: Path, header: bytes, body: bytes, if_none_match: bool, if_match: str | None
) -> bool:
    """Write the object unless a condition fails; False when it does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}%t")
    with open(tmp, "wb") as f:
        f.write(len(header).to_bytes(4, "big") + header + body)
    try:
        if not (if_none_match or if_match is not None):
            os.replace(tmp, path)
            return True
        with _dir_lock(path.parent):
            current = _read(path, False)
            if if_none_match and current is not None:
                return False
            if if_match is not None and (current is None or current[0]["etag"] != if_match):
                return False
            os.replace(tmp, path)
            return True
    finally:
        tmp.unlink(missing_ok=True)


def _delete(path: Path, if_match: str | None) -> bool:
    """Delete the object unless ``if_match`` names another version (or none); False then."""
    try:
        with _dir_lock(path.parent):
            if if_match is not None:
                current = _read(path, False)
                if current is None or current[0]["etag"] != if_match:
                    return False
            path.unlink(missing_ok=True)
    except FileNotFoundError:  # the directory itself does not exist
        return if_match is None
    return True


def _remove_temp_files(root: Path, older_than: float, dry_run: bool) -> int:
    cutoff = time.time() - older_than
    found = 0
    for directory, _, files in os.walk(root):
        for name in files:
            if not _TEMP_NAME.search(name):  # only this store's own temp files
                continue
            path = Path(directory, name)
            try:
                if path.stat().st_mtime > cutoff:
                    continue
                if not dry_run:
                    path.unlink()
            except FileNotFoundError:
                continue
            found += 1
    return found


@contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """Exclusive fcntl lock on a directory's lock file (threads and processes alike)."""
    fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _list(root: Path, prefix: str, start_after: str, limit: int) -> list[str]:
    out: list[str] = []
    for key in _walk(root, "", max(prefix, start_after)):
        if not key.startswith(prefix):
            if key > prefix:
                break  # keys under a prefix are contiguous in sorted order
            continue
        if key > start_after:
            out.append(key)
            if len(out) == limit:
                break
    return out


def _walk(directory: Path, base: str, low: str) -> Iterator[str]:
    """Keys under ``directory`` in byte order, skipping subtrees entirely below ``low``."""
    entries: list[tuple[str, Path | None]] = []
    try:
        with os.scandir(directory) as it:
            for e in it:
                if e.name.endswith(_OBJ):
                    entries.append((base + _unescape(e.name[: -len(_OBJ)]), None))
                elif e.is_dir(follow_symlinks=False):
                    entries.append((base + _unescape(e.name) + "/", Path(e.path)))
    except FileNotFoundError:
        return
    entries.sort()
    for key, sub in entries:
        if sub is None:
            yield key
        elif key >= low or low.startswith(key):
            yield from _walk(sub, key, low)
