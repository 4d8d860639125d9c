"""Conformance suite for the storage clients: the same tests on memory://, file:// and real S3."""

from __future__ import annotations

import asyncio
import math
import socket
import subprocess
import sys
import time
import uuid

import pytest

from s3db_core.errors import StorageError
from s3db_core.storage import ObjectNotFound, PreconditionFailed, StorageClient, open_storage
from s3db_core.storage.file import FileStorage
from s3db_core.storage.memory import MemoryStorage
from s3db_core.storage.s3 import S3Storage

META = {f"field{i:02d}": "v" * 60 for i in range(28)}  # ~2 KB of user metadata


@pytest.fixture
async def store(storage_url: str):
    client = open_storage(storage_url)
    await client.connect()
    yield client
    await client.close()


def is_s3(store: StorageClient) -> bool:
    return isinstance(store, S3Storage)


async def test_round_trip_body_and_metadata(store: StorageClient) -> None:
    body = bytes(range(256)) * 4
    etag = await store.put("resource=a/data/id=1", body, META)
    got = await store.get("resource=a/data/id=1")
    assert (got.key, got.body, got.metadata, got.etag) == ("resource=a/data/id=1", body, META, etag)
    head = await store.head("resource=a/data/id=1")
    assert (head.body, head.metadata, head.etag) == (b"", META, etag)


async def test_metadata_keys_come_back_lower_case(store: StorageClient) -> None:
    await store.put("k", b"", {"RoomId": "r1"})
    assert (await store.get("k")).metadata == {"roomid": "r1"}


async def test_caller_cannot_mutate_stored_metadata(store: StorageClient) -> None:
    meta = {"a": "1"}
    await store.put("k", b"x", meta)
    meta["a"] = "changed"
    (await store.get("k")).metadata["a"] = "changed too"
    assert (await store.get("k")).metadata == {"a": "1"}


async def test_non_ascii_metadata_is_rejected_everywhere(store: StorageClient) -> None:
    with pytest.raises(ValueError):
        await store.put("k", b"", {"name": "Zoë"})
    with pytest.raises(ObjectNotFound):
        await store.head("k")


async def test_missing_key(store: StorageClient) -> None:
    with pytest.raises(ObjectNotFound):
        await store.get("nope")
    with pytest.raises(ObjectNotFound):
        await store.head("nope")


async def test_etag_changes_on_overwrite(store: StorageClient) -> None:
    first = await store.put("k", b"one", {})
    second = await store.put("k", b"two", {})
    assert first != second
    assert (await store.head("k")).etag == second
    assert (await store.get("k")).body == b"two"


async def test_if_none_match_creates_only(store: StorageClient) -> None:
    await store.put("k", b"first", {}, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await store.put("k", b"second", {}, if_none_match=True)
    assert (await store.get("k")).body == b"first"


async def test_racing_creators_have_exactly_one_winner(store: StorageClient) -> None:
    async def create(i: int) -> int | None:
        try:
            await store.put("race", str(i).encode(), {"writer": str(i)}, if_none_match=True)
            return i
        except PreconditionFailed:
            return None

    results = await asyncio.gather(*(create(i) for i in range(8)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert (await store.get("race")).body == str(winners[0]).encode()


async def test_if_match(store: StorageClient) -> None:
    stale = await store.put("k", b"v1", {})
    fresh = await store.put("k", b"v2", {}, if_match=stale)
    with pytest.raises(PreconditionFailed):
        await store.put("k", b"v3", {}, if_match=stale)
    assert (await store.get("k")).etag == fresh
    with pytest.raises(PreconditionFailed):
        await store.put("missing", b"v", {}, if_match=fresh)
    with pytest.raises(ObjectNotFound):
        await store.head("missing")


async def test_delete(store: StorageClient) -> None:
    await store.put("k", b"v", {})
    await store.delete("k")
    with pytest.raises(ObjectNotFound):
        await store.get("k")
    assert (await store.list("")).keys == []
    await store.delete("k")  # missing is fine
    await store.put("k", b"again", {}, if_none_match=True)  # and the key is free again
    assert (await store.get("k")).body == b"again"


FLAT_KEYS = [
    "a", "a-b", "a_b", "a.b", "a=b", "a~b", "a0", "a9", "aZ", "aa", "A", "B", "Z", "_", "-",
    "0", "9", "b", "id=Zz", "id=zZ", "id=ZZ", "id=zz",
]  # fmt: skip
NESTED_KEYS = ["a/b", "a-b", "a/b/c", "a/b-c", "a0", "ab/Cd", "ab/cd", "ab/c~d"]
SEAWEEDFS_TREE_ORDER = pytest.mark.xfail(
    strict=True,
    reason="SeaweedFS lists directory by directory ('a/b' before 'a-b'), not in byte order",
)


def backends(*names: str, s3_marks: tuple[pytest.MarkDecorator, ...] = ()) -> pytest.MarkDecorator:
    """Run a test on some backends only (``storage_url`` parametrized indirectly)."""
    params = [pytest.param(n, marks=s3_marks if n == "s3" else ()) for n in names]
    return pytest.mark.parametrize("storage_url", params, indirect=True)


async def put_all(store: StorageClient, keys: list[str]) -> None:
    await asyncio.gather(*(store.put(k, k.encode(), {}) for k in keys))


async def test_list_in_byte_order(store: StorageClient) -> None:
    await put_all(store, FLAT_KEYS)
    page = await store.list("")
    assert page.keys == sorted(FLAT_KEYS, key=str.encode)
    assert page.next_start_after is None
    for k in FLAT_KEYS:  # every key is its own object, also on case-insensitive file systems
        assert (await store.get(k)).body == k.encode()


@backends("memory", "file", "s3", s3_marks=(SEAWEEDFS_TREE_ORDER,))
async def test_list_nested_keys_in_byte_order(store: StorageClient) -> None:
    await put_all(store, NESTED_KEYS)
    assert (await store.list("")).keys == sorted(NESTED_KEYS, key=str.encode)
    assert (await store.list("a/")).keys == ["a/b", "a/b-c", "a/b/c"]


async def test_list_prefix_and_start_after(store: StorageClient) -> None:
    keys = ["r=a/id=1", "r=a/id=2", "r=a/id=3", "r=ab/id=1", "r=b/id=1", "r/id=0"]
    await put_all(store, keys)
    assert (await store.list("r=a/")).keys == ["r=a/id=1", "r=a/id=2", "r=a/id=3"]
    assert (await store.list("r=a")).keys == ["r=a/id=1", "r=a/id=2", "r=a/id=3", "r=ab/id=1"]
    assert (await store.list("r=a/", start_after="r=a/id=1")).keys == ["r=a/id=2", "r=a/id=3"]
    assert (await store.list("r=a/", start_after="r=")).keys == ["r=a/id=1", "r=a/id=2", "r=a/id=3"]
    assert (await store.list("r=a/", start_after="r=a/id=3")).keys == []
    assert (await store.list("", start_after="r=ab/id=1")).keys == ["r=b/id=1"]
    assert (await store.list("", max_keys=1)).keys == ["r/id=0"]  # '/' sorts before '='

    assert (await store.list("r=a/id=2")).keys == ["r=a/id=2"]
    assert (await store.list("nothing/")).keys == []


async def test_pagination_across_pages(store: StorageClient) -> None:
    n, page_size = (30, 7) if is_s3(store) else (1205, 1000)
    keys = [f"resource=r/data/id={i:05d}" for i in range(n)]
    sem = asyncio.Semaphore(16)

    async def put(k: str) -> None:
        async with sem:
            await store.put(k, b"", {})

    await asyncio.gather(*(put(k) for k in keys))
    await store.put("resource=r0/data/id=0", b"", {})  # outside the prefix, sorts right after
    store.requests.reset()
    seen: list[str] = []
    start_after = None
    while True:
        page = await store.list("resource=r/", start_after=start_after, max_keys=page_size)
        assert len(page.keys) <= page_size
        seen += page.keys
        if page.next_start_after is None:
            break
        assert page.next_start_after == page.keys[-1]
        start_after = page.next_start_after
    assert seen == keys
    assert store.requests.snapshot() == {"LIST": math.ceil(n / page_size)}


async def test_request_counters(store: StorageClient) -> None:
    assert store.requests.snapshot() == {}
    etag = await store.put("k", b"v", {})
    with pytest.raises(PreconditionFailed):
        await store.put("k", b"v", {}, if_none_match=True)
    await store.put("k", b"v", {}, if_match=etag)
    await store.get("k")
    with pytest.raises(ObjectNotFound):
        await store.get("missing")
    await store.head("k")
    await store.list("")
    await store.delete("k")
    assert store.requests.snapshot() == {"PUT": 3, "GET": 2, "HEAD": 1, "LIST": 1, "DELETE": 1}
    assert store.requests["PUT"] == 3 and store.requests["COPY"] == 0
    store.requests.reset()
    assert store.requests.snapshot() == {}


@backends("memory", "s3")  # a file:// "prefix" is just part of the directory
async def test_prefix_is_applied_by_the_client(storage_url: str) -> None:
    root = open_storage(storage_url)
    a, b = open_storage(storage_url + "/tenant-a"), open_storage(storage_url + "/tenant-b")
    for s in (root, a, b):
        await s.connect()
    try:
        assert a.prefix.endswith("tenant-a") and a.describe().endswith("tenant-a")
        await a.put("k", b"from a", {})
        await b.put("k", b"from b", {})
        assert (await a.get("k")).body == b"from a"
        assert (await a.list("")).keys == ["k"]
        assert (await root.list("")).keys == ["tenant-a/k", "tenant-b/k"]
        assert (await root.get("tenant-b/k")).body == b"from b"
    finally:
        for s in (root, a, b):
            await s.close()


def test_open_storage_by_scheme(tmp_path) -> None:
    assert isinstance(open_storage("memory://x"), MemoryStorage)
    assert isinstance(open_storage(f"file://{tmp_path}"), FileStorage)
    for url in ("s3://k:s@bucket/p", "http://k:s@127.0.0.1:1/b/p", "https://h/b"):
        assert isinstance(open_storage(url), S3Storage)
    with pytest.raises(ValueError) as err:
        open_storage("ftp://user:topsecret@host/b")
    message = str(err.value)
    assert "'ftp'" in message and "memory" in message and "https" in message
    assert "topsecret" not in message


def test_s3_url_parsing() -> None:
    aws = S3Storage("s3://AK%2F1:se%2Bcret@my-bucket/some/prefix?region=eu-west-1")
    assert (aws.bucket, aws.prefix, aws.endpoint) == ("my-bucket", "some/prefix", None)
    assert aws.describe() == "s3://my-bucket/some/prefix"
    assert (aws._access_key, aws._secret_key, aws._region) == ("AK/1", "se+cret", "eu-west-1")
    local = S3Storage("http://k:s@127.0.0.1:9000/bkt")
    assert (local.endpoint, local.bucket, local.prefix) == ("http://127.0.0.1:9000", "bkt", "")
    assert local.describe() == "http://127.0.0.1:9000/bkt"
    anonymous = S3Storage("s3://bkt")
    assert anonymous._access_key is None and anonymous._secret_key is None


async def test_memory_stores_share_data_by_name() -> None:
    name = f"shared-{uuid.uuid4().hex}"
    await MemoryStorage(f"memory://{name}").put("k", b"v", {})
    assert (await MemoryStorage(f"memory://{name}").get("k")).body == b"v"
    await MemoryStorage("memory://").put("k", b"v", {})
    with pytest.raises(ObjectNotFound):
        await MemoryStorage("memory://").get("k")


async def test_file_store_survives_reopen(tmp_path) -> None:
    url = f"file://{tmp_path}/data"
    first = FileStorage(url)
    await first.connect()
    etag = await first.put("resource=u/data/id=Ab", b"body", {"name": "ada"})
    await first.close()
    second = FileStorage(url)
    await second.connect()
    got = await second.get("resource=u/data/id=Ab")
    assert (got.body, got.metadata, got.etag) == (b"body", {"name": "ada"}, etag)
    assert (await second.list("")).keys == ["resource=u/data/id=Ab"]


async def test_file_store_relative_url(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = FileStorage("file://./rel/data")
    await store.connect()
    await store.put("k", b"v", {})
    assert store.root == tmp_path / "rel" / "data"
    assert any((tmp_path / "rel" / "data").iterdir())


@pytest.mark.parametrize("key", ["../x", "a/../../x", "..", "a/./b", "a//b", "/abs", "a/"])
async def test_file_store_rejects_path_escape(tmp_path, key: str) -> None:
    store = FileStorage(f"file://{tmp_path}/root")
    await store.connect()
    for call in (store.put(key, b"v", {}), store.get(key), store.head(key), store.delete(key)):
        with pytest.raises(ValueError):
            await call
    assert [p.name for p in tmp_path.iterdir()] == ["root"]
    assert not any((tmp_path / "root").iterdir())


async def test_file_store_one_winner_across_processes(tmp_path) -> None:
    script = (
        "import asyncio, sys, time\n"
        "from s3db_core.storage.file import FileStorage\n"
        "from s3db_core.storage import PreconditionFailed\n"
        "async def main():\n"
        "    s = FileStorage(sys.argv[1]); await s.connect()\n"
        "    time.sleep(max(0, float(sys.argv[2]) - time.time()))\n"
        "    async def one(i):\n"
        "        try:\n"
        "            await s.put(f'k{i}', sys.argv[3].encode(), {}, if_none_match=True)\n"
        "            return f'k{i}'\n"
        "        except PreconditionFailed:\n"
        "            return None\n"
        "    print(*filter(None, await asyncio.gather(*(one(i) for i in range(20)))))\n"
        "asyncio.run(main())\n"
    )
    url, start = f"file://{tmp_path}", str(time.time() + 1.0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, url, start, f"p{n}"], stdout=subprocess.PIPE
        )
        for n in range(3)
    ]
    won = [p.communicate(timeout=30)[0].decode().split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(k for keys in won for k in keys) == sorted(f"k{i}" for i in range(20))
    store = FileStorage(url)
    for n, keys in enumerate(won):
        for k in keys:
            assert (await store.get(k)).body == f"p{n}".encode()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_s3_store_that_is_down_fails_fast_without_secrets() -> None:
    store = S3Storage(f"http://AKIDSECRETKEY:hunter2secret@127.0.0.1:{closed_port()}/bkt/p")
    started = time.monotonic()
    with pytest.raises(StorageError) as err:
        await store.connect()
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "127.0.0.1" in message and "bkt" in message
    assert "hunter2secret" not in message and "AKIDSECRETKEY" not in message
    with pytest.raises(StorageError):  # not connected: a clear error, not an AttributeError
        await store.get("k")


async def test_s3_missing_bucket(s3_server) -> None:
    store = S3Storage(s3_server.url().replace(s3_server.bucket, "no-such-bucket-s3db"))
    with pytest.raises(StorageError) as err:
        await store.connect()
    assert "no-such-bucket-s3db" in str(err.value)
    assert s3_server.secret not in str(err.value)
