"""Writes made outside the stream: a foreign write (a Database on the ``local`` broker, which
publishes to nobody) to the event on a subscriber of the shared Redis broker, through
``s3db watch`` on SeaweedFS's filer feed; p50 and p99, against the same write made through the
shared broker (the servers' own path), in one run.

The watcher waits ``--grace`` seconds for the stream to carry a write before it reads it, so its
delay is the filer's notification + grace + one GET: measured at the default grace (0.5 s) and
at 0.05 s. Writes are paced (one every 50 ms), the writer and the subscriber share one process
(one clock), the watcher is its own process as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from .harness import Result, Stat, percentile

ROOT = Path(__file__).resolve().parent.parent


def _tests_module(name: str) -> Any:
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def _feeds_path(where: Path) -> str:
    """A path registering ``s3db.store_feeds`` when the installed metadata predates the group."""
    from s3db_core.plugins import load_entry_point

    try:
        load_entry_point("s3db.store_feeds", "seaweedfs")
        return ""
    except ValueError:
        pass
    group = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    info = where / "s3db_feeds_checkout-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: s3db-feeds-checkout\nVersion: 0\n")
    lines = [f"{k} = {v}" for k, v in group["s3db.store_feeds"].items()]
    (info / "entry_points.txt").write_text("[s3db.store_feeds]\n" + "\n".join(lines) + "\n")
    return str(where)


async def _measure(store: str, broker: str, feed: str, work: Path, writes: int,
                   grace: float | None) -> list[float]:  # fmt: skip
    """Write-to-event latencies (ms): foreign writes through a watcher with ``grace``, or (None)
    the servers' own writes through the shared broker."""
    from s3db_core import Change, Database, hookimpl

    arrived: dict[str, float] = {}

    class Clock:
        @hookimpl
        def s3db_change(self, change: Change) -> None:
            arrived.setdefault(str(change.record.get("id")), time.monotonic())

    server = Database(store, broker=broker)
    await server.use_plugin(Clock())
    await server.connect()
    await server.create_resource("notes", {"text": "string|required"})
    writer = server if grace is None else Database(store)
    watcher = None
    if grace is not None:
        await writer.connect()
        path = os.pathsep.join(p for p in (str(ROOT), _feeds_path(work / "feeds")) if p)
        log = open(work / f"watch-{grace}.log", "wb")
        watcher = subprocess.Popen(
            [sys.executable, "-m", "s3db_ws_plugin.cli", "watch", store, "--broker", broker,
             "--feed", feed, "--state", str(work / f"state-{grace}.json"), "--grace", str(grace),
             "--log-level", "warning"],
            stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": path},
        )  # fmt: skip
        log.close()
        # Until the watcher delivers (it connects, and its feed subscribes from "now"): probes.
        deadline = time.monotonic() + 60
        while True:
            probe = await writer.resources.notes.insert({"text": "probe"})
            waited = time.monotonic() + 2
            while probe["id"] not in arrived and time.monotonic() < waited:
                await asyncio.sleep(0.05)
            if probe["id"] in arrived:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the watcher delivered nothing within 60 s")
    try:
        sent: dict[str, float] = {}
        notes = writer.resources.notes
        for i in range(writes):
            t0 = time.monotonic()
            record = await notes.insert({"text": f"n{i}"})
            sent[record["id"]] = t0
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + 30
        while len([k for k in sent if k in arrived]) < len(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return [(arrived[k] - t0) * 1000 for k, t0 in sent.items() if k in arrived]
    finally:
        if watcher is not None:
            watcher.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                watcher.wait(20)
            if watcher.poll() is None:
                watcher.kill()
        if writer is not server:
            await writer.disconnect()
        await server.disconnect()


def run(quick: bool) -> list[Result]:
    writes = 20 if quick else 200
    s3server, services = _tests_module("s3server"), _tests_module("services")
    s3 = s3server.start_s3_server()
    redis = services.start_redis()
    try:
        with tempfile.TemporaryDirectory(prefix="s3db-bench-watch-") as tmp:
            work = Path(tmp)
            feed = f"seaweedfs://127.0.0.1:{s3.port - 1}"

            def one(grace: float | None, tag: str) -> list[float]:
                store = s3.url(f"bench-watch-{tag}-{time.monotonic_ns()}")
                broker = f"{redis.url}?prefix=bw{time.monotonic_ns()}"
                return asyncio.run(_measure(store, broker, feed, work, writes, grace))

            base = one(None, "base")
            rows = []
            for grace in (0.5, 0.05):
                ours = one(grace, str(grace))
                for pct in (50, 99):
                    mine, theirs = percentile(ours, pct), percentile(base, pct)
                    rows.append(Result(
                        name=f"foreign write to subscriber event via s3db watch (SeaweedFS, "
                             f"--grace {grace}), p{pct}",
                        params={"writes": writes, "grace_s": grace, "pace_ms": 50},
                        unit="ms",
                        ours=Stat(mine, mine, mine, 1),
                        baseline=Stat(theirs, theirs, theirs, 1),
                        extra={"delivered": len(ours), "of": writes,
                               "baseline_delivered": len(base)},
                        notes=["baseline: the same insert made through the shared Redis broker "
                               "(the servers' own path)"],
                    ))  # fmt: skip
            return rows
    finally:
        redis.stop()
        s3.stop()
