"""``s3db watch`` on SeaweedFS's filer feed (real ``weed``, real Redis): writes made by programs
that do not publish reach the subscribers of the shared broker, once each and in order per
record; the servers' own writes are not doubled; a watcher killed with -9 resumes from its saved
position (or subscribers see a new epoch), never a silent gap."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker_helpers import Collector, eventually
from s3server import S3Server, start_s3_server
from services import start_redis

from s3db_core import Database
from s3db_core.plugins import clear_entry_point_cache, load_entry_point

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 30.0
_FEEDS_DIR: str | None = None


@pytest.fixture(scope="module")
def feeds_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A path where ``s3db.store_feeds`` is registered even when the installed metadata predates
    the group (a checkout not reinstalled since): a dist-info made from pyproject.toml, made once
    per session (the subprocesses of every module that takes it need it on their path)."""
    global _FEEDS_DIR
    if _FEEDS_DIR is not None:
        return _FEEDS_DIR
    try:
        load_entry_point("s3db.store_feeds", "sqs")
        _FEEDS_DIR = ""
        return ""
    except ValueError:
        pass
    group = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    where = tmp_path_factory.mktemp("feeds")
    info = where / "s3db_feeds_checkout-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: s3db-feeds-checkout\nVersion: 0\n")
    lines = [f"{k} = {v}" for k, v in group["s3db.store_feeds"].items()]
    (info / "entry_points.txt").write_text("[s3db.store_feeds]\n" + "\n".join(lines) + "\n")
    sys.path.append(str(where))
    clear_entry_point_cache()
    _FEEDS_DIR = str(where)
    return _FEEDS_DIR


class WatchProcess:
    def __init__(self, store: str, broker: str, feed: str, state: Path, extra_path: str) -> None:
        path = os.pathsep.join(p for p in (str(ROOT), extra_path) if p)
        self.env = {**os.environ, "PYTHONPATH": path}
        self.args = [sys.executable, "-m", "s3db_ws_plugin.cli", "watch", store, "--broker",
                     broker, "--feed", feed, "--state", str(state), "--log-format", "json",
                     "--grace", "0.3"]  # fmt: skip
        self.log = state.with_suffix(".log")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(self.log, "ab")
        self.process = subprocess.Popen(self.args, stdout=out, stderr=out, env=self.env)
        out.close()

    async def wait_started(self) -> None:
        # Writes from here on are delivered: the feed starts from the moment it was made.
        await eventually(lambda: b"watch_started" in self.log.read_bytes(), "watcher", DEADLINE)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(20)


def told(events: list[Any], watcher: WatchProcess) -> str:
    """What a failed assertion shows: every event the client got, and the watcher's log."""
    lines = [f"{e.event} v{e.version} {e.data} epoch={e.epoch} offset={e.offset}" for e in events]
    return "\n".join(["events:", *lines, "watcher log:",
                      watcher.log.read_text(errors="replace")[-6000:]])  # fmt: skip


def versions(seen: Collector, id_: str) -> list[tuple[str, int]]:
    return [(c.event, c.version) for c in seen.of("notes") if c.record.get("id") == id_]


async def test_foreign_writes_reach_subscribers_once_and_resume_after_kill(
    s3_server: S3Server, redis_url: str, feeds_path: str, tmp_path: Path
) -> None:
    store = s3_server.url(f"watch-{uuid.uuid4().hex[:8]}")
    broker = f"{redis_url}?prefix=w{uuid.uuid4().hex[:10]}"
    feed = f"seaweedfs://127.0.0.1:{s3_server.port - 1}"
    server = Database(store, broker=broker)  # the servers' side: a subscriber on Redis
    seen = Collector()
    await server.use_plugin(seen)
    await server.connect()
    await server.create_resource("notes", {"text": "string|required"})
    foreign = Database(store)  # a program on the local broker: it publishes to nobody
    await foreign.connect()
    watcher = WatchProcess(store, broker, feed, tmp_path / "state.json", feeds_path)
    watcher.start()
    try:
        await watcher.wait_started()
        notes = foreign.resources.notes

        def last(id_: str) -> tuple[str, int] | None:
            found = versions(seen, id_)
            return found[-1] if found else None

        a = await notes.insert({"text": "a1"})
        await eventually(lambda: last(a["id"]) == ("insert", 1), "foreign insert", DEADLINE)
        await notes.update(a["id"], {"text": "a2"})
        await eventually(lambda: last(a["id"]) == ("update", 2), "foreign update", DEADLINE)
        b = await notes.insert({"text": "b1"})
        await eventually(lambda: last(b["id"]) == ("insert", 1), "foreign insert", DEADLINE)
        await notes.delete(b["id"])
        await eventually(lambda: last(b["id"]) == ("delete", 1), "foreign delete", DEADLINE)
        assert versions(seen, a["id"]) == [("insert", 1), ("update", 2)]
        assert versions(seen, b["id"]) == [("insert", 1), ("delete", 1)]
        assert [c.record["text"] for c in seen.of("notes")
                if c.record.get("id") == a["id"]] == ["a1", "a2"]  # fmt: skip
        # A burst: states closer than the feed's reads may merge into the latest (the feed
        # carries no content), but never out of order, twice, or short of the last one.
        burst = await notes.insert({"text": "x1"})
        for n in range(2, 5):
            await notes.update(burst["id"], {"text": f"x{n}"})
        await eventually(lambda: (last(burst["id"]) or ("", 0))[1] == 4, "the burst", DEADLINE)
        seq = [v for _, v in versions(seen, burst["id"])]
        assert seq == sorted(set(seq)) and seq[-1] == 4

        # A raw PUT by another tool: a copy of a record's object under a new id.
        s3 = s3_server.boto3_client()
        prefix = store.rsplit("/", 1)[1]
        source = s3.get_object(Bucket=s3_server.bucket, Key=f"{prefix}/resource=notes/data/id={a['id']}")
        raw_id = "raw" + uuid.uuid4().hex[:8]
        s3.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/resource=notes/data/id={raw_id}",
                      Body=source["Body"].read(), Metadata=source["Metadata"])  # fmt: skip
        await eventually(lambda: len(versions(seen, raw_id)) == 1, "the raw PUT", DEADLINE)
        assert versions(seen, raw_id)[0][0] == "insert"
        assert seen.of("notes")[-1].record["text"] == "a2"

        # A damaged record and a key that is no record: skipped (the first logged with an
        # error id), and the watcher goes on.
        s3.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/resource=notes/data/id=broken",
                      Body=b"\xff not a record", Metadata={"sb": "1"})  # fmt: skip
        s3.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/exports/today.csv", Body=b"x")

        # The servers' own writes: once each, never doubled by the watcher.
        mine = await server.resources.notes.insert({"text": "own"})
        await server.resources.notes.update(mine["id"], {"text": "own2"})
        marker = await notes.insert({"text": "marker"})  # after it, the feed has caught up
        await eventually(lambda: len(versions(seen, marker["id"])) == 1, "marker", DEADLINE)
        assert versions(seen, mine["id"]) == [("insert", 1), ("update", 2)]
        await server.resources.notes.delete(mine["id"])
        other = await notes.insert({"text": "marker2"})
        await eventually(lambda: len(versions(seen, other["id"])) == 1, "marker", DEADLINE)
        assert versions(seen, mine["id"]) == [("insert", 1), ("update", 2), ("delete", 2)]
        assert versions(seen, "broken") == []
        unreadable = [line for line in watcher.log.read_text().splitlines()
                      if "record_unreadable" in line]  # fmt: skip
        assert len(unreadable) == 1 and '"error_id"' in unreadable[0]

        # kill -9 the watcher, write while it is down, start it again.
        watcher.kill()
        epoch_before = seen.changes[-1].epoch
        await notes.update(a["id"], {"text": "a3"})
        c = await notes.insert({"text": "c1"})
        watcher.start()
        await eventually(lambda: last(c["id"]) == ("insert", 1), "missed insert", DEADLINE)
        await eventually(lambda: last(a["id"]) == ("update", 3), "missed update", DEADLINE)
        assert versions(seen, a["id"]) == [("insert", 1), ("update", 2), ("update", 3)]
        # Resumed from the saved position: everything missed arrived. (The update of a record
        # whose previous state the restarted watcher did not know also opened a new epoch.)
        assert seen.changes[-1].epoch != epoch_before
        assert watcher.stop() == 0
        assert b"testsecret" not in watcher.log.read_bytes()
    finally:
        if watcher.process is not None and watcher.process.poll() is None:
            watcher.kill()
        await foreign.disconnect()
        await server.disconnect()


@pytest.fixture
def own_s3_server() -> Iterator[S3Server]:
    server = start_s3_server(restartable=True)
    yield server
    server.stop()


async def test_kill_9_of_weed_opens_a_new_epoch_then_the_watcher_goes_on(
    own_s3_server: S3Server, redis_url: str, feeds_path: str, tmp_path: Path
) -> None:
    """The filer may lose the unflushed tail of its metadata log when it is killed: the watcher
    cannot vouch for that moment, so subscribers get a new epoch (they reload), not a gap."""
    s3 = own_s3_server
    store = s3.url("killed")
    broker = f"{redis_url}?prefix=k{uuid.uuid4().hex[:10]}"
    server = Database(store, broker=broker)
    seen = Collector()
    await server.use_plugin(seen)
    await server.connect()
    await server.create_resource("notes", {"text": "string|required"})
    foreign = Database(store)
    await foreign.connect()
    watcher = WatchProcess(store, broker, f"seaweedfs://127.0.0.1:{s3.port - 1}",
                           tmp_path / "state.json", feeds_path)  # fmt: skip
    watcher.start()
    try:
        await watcher.wait_started()
        a = await foreign.resources.notes.insert({"text": "before"})
        await eventually(lambda: len(versions(seen, a["id"])) == 1, "first write", DEADLINE)
        epoch = (await server.broker.position("notes")).epoch
        assert seen.changes[-1].epoch == epoch
        await asyncio.to_thread(s3.kill)
        await eventually(lambda: b"feed_ended" in watcher.log.read_bytes(), "feed end", DEADLINE)
        await asyncio.to_thread(s3.restart)
        for _ in range(100):  # opened when the feed ended, before any new change
            if (await server.broker.position("notes")).epoch != epoch:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no new epoch after the filer was killed")
        b = await foreign.resources.notes.insert({"text": "after"})
        await eventually(lambda: len(versions(seen, b["id"])) == 1, "write after", DEADLINE * 2)
        assert seen.changes[-1].epoch != epoch  # a live subscriber sees the new epoch: reload
        assert watcher.stop() == 0
    finally:
        if watcher.process is not None and watcher.process.poll() is None:
            watcher.kill()
        await foreign.disconnect()
        await server.disconnect()


async def test_broker_down_then_watcher_killed_loses_nothing(
    s3_server: S3Server, feeds_path: str, tmp_path: Path
) -> None:
    """A change the watcher could not hand to the broker (down) keeps its feed position from
    being saved: killed meanwhile, the restarted watcher publishes it once the broker is back."""
    redis = start_redis(persistent=True)
    store = s3_server.url(f"down-{uuid.uuid4().hex[:8]}")
    broker = f"{redis.url}?prefix=d{uuid.uuid4().hex[:10]}"
    feed = f"seaweedfs://127.0.0.1:{s3_server.port - 1}"
    foreign = Database(store)
    await foreign.connect()
    await foreign.create_resource("notes", {"text": "string|required"})
    watcher = WatchProcess(store, broker, feed, tmp_path / "state.json", feeds_path)
    watcher.start()
    server = None
    try:
        await watcher.wait_started()
        first = await foreign.resources.notes.insert({"text": "first"})
        state = tmp_path / "state.json"
        await eventually(state.exists, "the first write handled and its position saved", DEADLINE)
        redis.kill()
        lost = await foreign.resources.notes.insert({"text": "while redis is down"})
        await eventually(lambda: b"publish_failed" in watcher.log.read_bytes(), "publish", DEADLINE)
        watcher.kill()
        redis.start()
        server = Database(store, broker=broker)
        seen = Collector()
        await server.use_plugin(seen)
        await server.connect()
        watcher.start()
        await eventually(lambda: len(versions(seen, lost["id"])) == 1, "the lost write", DEADLINE)
        assert versions(seen, lost["id"]) == [("insert", 1)]
        assert versions(seen, first["id"]) == []  # saved before: not published again
    finally:
        if watcher.process is not None and watcher.process.poll() is None:
            watcher.kill()
        await foreign.disconnect()
        if server is not None:
            await server.disconnect()
        redis.stop()


async def test_a_watcher_behind_its_stream_waits_for_it_instead_of_doubling_a_change(
    s3_server: S3Server, redis_url: str, tmp_path: Path
) -> None:
    """On a loaded machine the watcher may read the stream later than the store's feed, past its
    grace: a write the stream carries is still not published again (a duplicate), nor its update
    taken for one of a record it never heard of (a needless new epoch)."""
    from s3db_core.feeds import FeedEvent
    from s3db_ws_plugin.watch import Watcher

    store = s3_server.url(f"behind-{uuid.uuid4().hex[:8]}")
    broker = f"{redis_url}?prefix=b{uuid.uuid4().hex[:10]}"
    server = Database(store, broker=broker)
    seen = Collector()
    await server.use_plugin(seen)
    await server.connect()
    notes = await server.create_resource("notes", {"text": "string|required"})
    await notes.insert({"text": "before the watcher"})  # a stream that does not start empty
    watcher = Watcher(store, broker, "seaweedfs://127.0.0.1:1", tmp_path / "s.json", grace=0)
    await watcher.db.connect()

    async def busy(change: Any) -> None:  # the loaded machine: the stream reaches it late
        await asyncio.sleep(1.0)

    async def etag_of(id_: str) -> str:
        found = await notes.get_versioned(id_)
        assert found is not None
        return found[1]

    watcher.db.broker.subscribe(busy)
    watcher.db.broker.subscribe(watcher._on_stream)
    await watcher._baseline()
    try:
        mine = await notes.insert({"text": "own"})
        key = notes._key(mine["id"])
        await watcher.handle(FeedEvent("put", key, await etag_of(mine["id"]), "1.", True))
        await notes.update(mine["id"], {"text": "own2"})
        await watcher.handle(FeedEvent("put", key, await etag_of(mine["id"]), "2.", False))
        assert (watcher.stats.published, watcher.stats.duplicates) == (0, 2)
        assert watcher.stats.epochs == {}
        await eventually(lambda: len(versions(seen, mine["id"])) == 2, "own writes", DEADLINE)
        assert versions(seen, mine["id"]) == [("insert", 1), ("update", 2)]
    finally:
        await watcher.db.disconnect()
        await server.disconnect()


def test_what_the_watcher_remembers_is_bounded_by_count_and_bytes() -> None:
    from s3db_ws_plugin.watch import Bounded, _record_size

    known = Bounded(1000, 10_000, _record_size)
    for i in range(100):
        known.put(("notes", str(i)), ({"id": str(i), "text": "x" * 1000}, 1))
    assert known.bytes <= 10_000 and 0 < len(known) < 100
    assert ("notes", "99") in known and ("notes", "0") not in known
    known.put(("notes", "big"), ({"text": "y" * 50_000}, 1))  # the newest is always kept
    assert list(known) == [("notes", "big")]
    seen = Bounded(3)
    for i in range(10):
        seen.put(i, None)
    assert list(seen) == [7, 8, 9]


async def test_a_websocket_subscriber_of_a_server_process_gets_foreign_writes(
    s3_server: S3Server, redis_url: str, feeds_path: str, tmp_path: Path
) -> None:
    """As a user runs it: ``s3db serve`` on Redis, ``s3db watch`` beside it, a WebSocket client
    subscribed with a filter, and a program on the local broker writing the same bucket."""
    from test_scaleout import TESTS, free_port, processes, read_until

    from s3db_ws_plugin.client import Client

    sys.path.insert(0, str(TESTS))
    from scaleout_app import NOTES

    store = s3_server.url(f"ws-{uuid.uuid4().hex[:8]}")
    broker = f"{redis_url}?prefix=s{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = {**os.environ, "S3DB_APP_STORE": store, "S3DB_APP_BROKER": broker,
           "S3DB_APP_PORT": str(port), "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}  # fmt: skip
    foreign = Database(store)
    await foreign.connect()
    notes = await foreign.create_resource("notes", NOTES, timestamps=True)
    watcher = WatchProcess(store, broker, f"seaweedfs://127.0.0.1:{s3_server.port - 1}",
                           tmp_path / "state.json", feeds_path)  # fmt: skip
    client = Client(f"ws://127.0.0.1:{port}/")
    async with processes(env) as servers:
        await servers.serve()
        watcher.start()
        try:
            await watcher.wait_started()
            said = watcher.log.read_text()  # the start-up epoch is open before it says started
            assert said.index('"new_epoch"') < said.index('"watch_started"'), said
            await client.connect()
            sub = await client.subscribe("notes", filter={"roomId": "r1"})
            # One write at a time (writes closer together than the watcher's read of the
            # record merge into the latest state: the feed carries no content).
            a = await notes.insert({"title": "a1", "roomId": "r1"})
            events = await read_until(sub, 1)
            await notes.insert({"title": "elsewhere", "roomId": "r2"})  # not for this filter
            await notes.update(a["id"], {"title": "a2"})
            events += await read_until(sub, 1)
            await notes.delete(a["id"])
            events += await read_until(sub, 1)
            said = told(events, watcher)
            assert [(e.event, e.version, e.data.get("id")) for e in events] == [
                ("insert", 1, a["id"]), ("update", 2, a["id"]), ("delete", 2, a["id"])], said  # fmt: skip
            assert [e.data.get("title") for e in events[:2]] == ["a1", "a2"], said

            own = await client.insert("notes", {"title": "own", "roomId": "r1"})
            marker = await notes.insert({"title": "marker", "roomId": "r1"})
            events = await read_until(sub, 2)
            assert [(e.event, e.data.get("id")) for e in events] == [
                ("insert", own["id"]), ("insert", marker["id"])], told(events, watcher)  # fmt: skip

            watcher.kill()
            missed = await notes.insert({"title": "while the watcher was down", "roomId": "r1"})
            watcher.start()
            try:
                (event,) = await read_until(sub, 1)
            except TimeoutError:
                raise AssertionError(told([], watcher)) from None
            said = told([event], watcher)
            assert (event.event, event.data.get("id")) == ("insert", missed["id"]), said
            assert watcher.stop() == 0, told([], watcher)
        finally:
            if watcher.process is not None and watcher.process.poll() is None:
                watcher.kill()
            await client.close()
            await foreign.disconnect()


def test_watch_refuses_what_it_cannot_watch_with_one_clear_line(
    s3_server: S3Server, redis_url: str, feeds_path: str, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), feeds_path) if p)}
    store = s3_server.url("refused")
    cases = [
        (store, "local", "seaweedfs://127.0.0.1:1", 2, "needs a shared broker"),
        ("memory://x", redis_url, "seaweedfs://127.0.0.1:1", 1, "reads an S3 store"),
        (store, redis_url, "ftp://127.0.0.1:1", 1, "unknown store feed 'ftp'"),
    ]
    for url, broker, feed, code, message in cases:
        done = subprocess.run(
            [sys.executable, "-m", "s3db_ws_plugin.cli", "--log-format", "json", "watch", url,
             "--broker", broker, "--feed", feed, "--state", str(tmp_path / "s.json")],
            env=env, capture_output=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == code, done.stderr.decode()[-2000:]
        assert message in done.stderr.decode()
        assert s3_server.secret not in done.stderr.decode()
