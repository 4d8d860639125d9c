"""S3 storage backend (aiobotocore): AWS S3 or any S3-compatible endpoint.

URLs:
  ``s3://KEY:SECRET@bucket/prefix?region=us-east-1``      AWS; credentials optional (then the
                                                          usual AWS environment/credential chain)
  ``http(s)://KEY:SECRET@host:port/bucket/prefix``        MinIO, SeaweedFS, ... (path-style)

KEY and SECRET are URL-decoded. Conditional puts use ``If-None-Match: *`` / ``If-Match``; 412
(and 409 ConditionalRequestConflict) become PreconditionFailed, NoSuchKey/404 ObjectNotFound,
every other failure StorageError naming the endpoint and bucket, never the credentials.

Every request is bounded in time: ``connect_timeout`` (2 s) to open a connection,
``read_timeout`` (10 s) for each read from the socket, and ``timeout`` (20 s), the total for one
call including botocore's standard retries (3 attempts in all) and a PUT's ``Expect:
100-continue`` wait; past it the call raises StorageError. Set them in the URL query in seconds,
e.g. ``http://k:s@host:9000/bucket?timeout=5&connect_timeout=1``. ``requests`` counts logical calls:
one per method call, whatever botocore retried underneath.

SeaweedFS lists directory by directory rather than in strict byte order when keys of different
"directories" share a stem ("a/b" before "a-b"); keys inside one directory (a resource's ids,
one partition value) come in byte order on every store.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from functools import cache
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from s3db_core.errors import StorageError
from s3db_core.options import number_in
from s3db_core.redact import redact
from s3db_core.storage.base import (
    ListPage,
    ObjectNotFound,
    PreconditionFailed,
    RequestCounter,
    StoredObject,
    full_prefix,
    normalize_metadata,
    s3_key_problem,
)

_TRANSPORT_ERRORS = (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError)
_PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}
_MISSING_CODES = {"NoSuchKey", "NotFound", "404"}


DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_TIMEOUT = 20.0


def _seconds(query: dict[str, str], name: str, default: float) -> float:
    text = query.get(name)
    if text is None:
        return default
    return number_in(f"storage URL option {name} (seconds)", text, 0, 3600, above=True, text=True)


def _config(path_style: bool, connect_timeout: float, read_timeout: float) -> AioConfig:
    return AioConfig(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=64,
        s3={"addressing_style": "path" if path_style else "auto"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


@cache
def _session() -> AioSession:
    """One botocore session per process: it caches the service model, so a client after the
    first costs ~3 ms to create instead of ~100 ms (clients themselves are per store)."""
    return get_session()


class S3Storage:
    """Async S3 client bound to one bucket and key prefix."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        creds, _, host = parts.netloc.rpartition("@")
        key, _, secret = creds.partition(":")
        self._access_key = unquote(key) or None
        self._secret_key = unquote(secret) or None
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self._region = query.get("region")
        self.connect_timeout = _seconds(query, "connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        self.read_timeout = _seconds(query, "read_timeout", DEFAULT_READ_TIMEOUT)
        self.timeout = _seconds(query, "timeout", DEFAULT_TIMEOUT)
        path = unquote(parts.path).strip("/")
        if parts.scheme == "s3":
            self.endpoint: str | None = None
            self.bucket, self.prefix = host, path
        elif parts.scheme in ("http", "https"):
            self.endpoint = f"{parts.scheme}://{host}"
            self.bucket, _, self.prefix = path.partition("/")
        else:
            raise ValueError(f"S3Storage does not handle the scheme {parts.scheme!r}")
        if not self.bucket:
            raise ValueError(f"no bucket in the {parts.scheme}:// URL")
        self.prefix = self.prefix.strip("/")
        self._root = full_prefix(self.prefix)
        self.requests = RequestCounter()
        self._client: Any = None
        self._stack: AsyncExitStack | None = None

    def describe(self) -> str:
        base = f"{self.endpoint}/" if self.endpoint else "s3://"
        return f"{base}{self.bucket}/{self.prefix}".rstrip("/")

    async def connect(self) -> None:
        if self._client is not None:
            return
        session = _session()
        region = self._region or session.get_config_variable("region") or "us-east-1"
        stack = AsyncExitStack()
        self._client = await stack.enter_async_context(
            session.create_client(
                "s3",
                region_name=region,
                endpoint_url=self.endpoint,
                aws_access_key_id=self._access_key,
                aws_secret_access_key=self._secret_key,
                config=_config(
                    self.endpoint is not None, self.connect_timeout, self.read_timeout
                ),
            )
        )
        self._stack = stack
        try:
            async with asyncio.timeout(self.timeout):
                await self._client.head_bucket(Bucket=self.bucket)
        except (ClientError, *_TRANSPORT_ERRORS) as e:
            await self.close()
            if _status(e) == 404:
                raise StorageError(f"bucket not found: {self.describe()}") from e
            raise StorageError(f"cannot open {self.describe()}: {self._reason(e)}") from e

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @property
    def client(self) -> Any:
        if self._client is None:
            raise StorageError(f"{self.describe()}: storage not connected")
        return self._client

    def _reason(self, e: Exception) -> str:
        """Why a request failed, with any credential scrubbed out."""
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            text = f"{err.get('Code', _status(e))} {err.get('Message', '')}".strip()
        elif isinstance(e, TimeoutError):
            text = f"no reply within the {self.timeout:g} s timeout"
        else:
            text = f"{type(e).__name__}: {e}"
        return redact(text, (self._secret_key, self._access_key))

    def _failure(self, op: str, key: str, e: Exception) -> StorageError:
        return StorageError(f"S3 {op} {key!r} on {self.describe()} failed: {self._reason(e)}")

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
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._root + key,
            "Body": body,
            "Metadata": normalize_metadata(metadata),
            "ContentType": content_type,
        }
        if if_none_match:
            args["IfNoneMatch"] = "*"
        if if_match is not None:
            args["IfMatch"] = if_match
        client = self.client
        self.requests.add("PUT")
        try:
            async with asyncio.timeout(self.timeout):
                resp = await client.put_object(**args)
        except ClientError as e:
            code = _code(e)
            lost = _status(e) == 412 or code in _PRECONDITION_CODES
            # AWS answers If-Match on a missing key with 404 NoSuchKey.
            if lost or (if_match is not None and code in _MISSING_CODES):
                raise PreconditionFailed(key) from e
            raise self._failure("PUT", key, e) from e
        except _TRANSPORT_ERRORS as e:
            raise self._failure("PUT", key, e) from e
        return resp["ETag"]

    async def get(self, key: str) -> StoredObject:
        client = self.client
        self.requests.add("GET")
        try:
            async with asyncio.timeout(self.timeout):
                resp = await client.get_object(Bucket=self.bucket, Key=self._root + key)
                async with resp["Body"] as stream:
                    body = await stream.read()
        except (ClientError, *_TRANSPORT_ERRORS) as e:
            raise self._missing_or_failure("GET", key, e) from e
        return StoredObject(key, body, resp["Metadata"], resp["ETag"])

    async def head(self, key: str) -> StoredObject:
        client = self.client
        self.requests.add("HEAD")
        try:
            async with asyncio.timeout(self.timeout):
                resp = await client.head_object(Bucket=self.bucket, Key=self._root + key)
        except (ClientError, *_TRANSPORT_ERRORS) as e:
            raise self._missing_or_failure("HEAD", key, e) from e
        return StoredObject(key, b"", resp["Metadata"], resp["ETag"])

    def _missing_or_failure(self, op: str, key: str, e: Exception) -> Exception:
        if isinstance(e, ClientError) and _code(e) != "NoSuchBucket":
            if _code(e) in _MISSING_CODES or _status(e) == 404:
                return ObjectNotFound(key)
        return self._failure(op, key, e)

    def key_problem(self, key: str) -> str | None:
        return s3_key_problem(self._root + key)

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        client = self.client
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._root + key}
        if if_match is not None:
            args["IfMatch"] = if_match
        self.requests.add("DELETE")
        try:
            async with asyncio.timeout(self.timeout):
                await client.delete_object(**args)
        except ClientError as e:
            code = _code(e)
            if if_match is not None and (
                _status(e) in (404, 412) or code in _PRECONDITION_CODES or code in _MISSING_CODES
            ):
                raise PreconditionFailed(key) from e
            raise self._failure("DELETE", key, e) from e
        except _TRANSPORT_ERRORS as e:
            raise self._failure("DELETE", key, e) from e

    async def list(
        self, prefix: str, *, start_after: str | None = None, max_keys: int = 1000
    ) -> ListPage:
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self._root + prefix,
            "MaxKeys": max_keys,
        }
        if start_after:
            args["StartAfter"] = self._root + start_after
        client = self.client
        self.requests.add("LIST")
        try:
            async with asyncio.timeout(self.timeout):
                resp = await client.list_objects_v2(**args)
        except (ClientError, *_TRANSPORT_ERRORS) as e:
            raise self._failure("LIST", prefix, e) from e
        cut = len(self._root)
        contents = resp.get("Contents", ())
        keys = [obj["Key"][cut:] for obj in contents]
        etags = [obj.get("ETag", "") for obj in contents]
        more = resp.get("IsTruncated", False) and keys
        return ListPage(keys, keys[-1] if more else None, etags)


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _status(e: Exception) -> int | None:
    if isinstance(e, ClientError):
        return e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None
