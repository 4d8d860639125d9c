"""Insert-to-event latency against a real S3 server (SeaweedFS), minus a bare PUT (SPEC §9).

A SeaweedFS ``weed mini`` is started for the run and stopped at its end. The server process
holds a ``Database`` on it with a ``WebSocketPlugin`` (JWT auth, default settings); a client in
another process (aiohttp) is subscribed to the resource over a WebSocket.

* insert-to-event: from calling ``resource.insert(...)`` through the core, in the server
  process, until the subscribed client in the other process has received the event frame
  (both ends read ``time.monotonic()``, which is CLOCK_MONOTONIC: one clock for every process
  on the machine). It includes validation, encoding, the conditional PUT, the change hook, the
  fan-out and the socket hop.
* baseline, bare PUT: the very client our storage uses (``db.storage.client``, aiobotocore)
  doing ``put_object`` of an object of the same size and metadata (the previous inserted record
  encoded the same way) with the same ``If-None-Match: *``, to a fresh key.

Both are sampled interleaved (alternating which goes first), one at a time, in the same run;
each repetition's p50 and p99 are computed, and a row reports the medians over repetitions.
The number the target bounds is p50(insert-to-event) - p50(bare PUT), in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import time
from typing import Any

from .harness import Result, Stat, Target, percentile, s3_server, spawn

SECRET = "bench-latency-secret-0123456789abcdef"
RESOURCE = "events"
ATTRIBUTES = {
    "n": "number|required",
    "kind": "string",
    "payload": "string",
    "tags": "array|items:string",
}


def _data(n: int) -> dict[str, Any]:
    return {"n": n, "kind": "reading", "payload": "x" * 200, "tags": ["a", "b", "c"]}


def server_process(conn: Any) -> None:
    """Database on S3 + plugin; on ("sample", start, count) runs count interleaved PUT/inserts.

    Imports first, then waits for the store URL (so it starts while SeaweedFS does)."""
    import structlog

    from s3db_core import Database
    from s3db_core.ids import new_id
    from s3db_core.storage.base import full_prefix, normalize_metadata
    from s3db_ws_plugin import WebSocketPlugin

    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    url = conn.recv()

    async def main() -> None:
        db = Database(url)
        plugin = WebSocketPlugin(
            port=0,
            auth={"drivers": [{"driver": "jwt", "config": {"secret": SECRET}}]},
            resources={RESOURCE: True},
        )
        await db.use_plugin(plugin)
        await db.connect()
        res = await db.create_resource(RESOURCE, ATTRIBUTES, timestamps=True)
        storage = db.storage
        client = storage.client  # the aiobotocore client every storage call goes through
        root = full_prefix(storage.prefix)
        conn.send({"port": plugin.port})

        last = await res.insert(_data(-1))  # warm-up: first insert, first event
        serial = 0

        async def bare_put() -> float:
            nonlocal serial
            serial += 1
            metadata, body = res._to_stored(last)
            t0 = time.monotonic()
            await client.put_object(
                Bucket=storage.bucket,
                Key=f"{root}bare/id={new_id()}",
                Body=body,
                Metadata=normalize_metadata(metadata),
                ContentType="application/octet-stream",
                IfNoneMatch="*",
            )
            return time.monotonic() - t0

        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command[0] == "stop":
                await db.disconnect()
                conn.send("stopped")
                return
            _, start, count = command
            puts: list[float] = []
            sent: dict[int, float] = {}
            calls: list[float] = []
            for n in range(start, start + count):
                if n % 2:
                    puts.append(await bare_put())
                t0 = time.monotonic()
                sent[n] = t0
                last = await res.insert(_data(n))
                calls.append(time.monotonic() - t0)
                if not n % 2:
                    puts.append(await bare_put())
                await asyncio.sleep(0.002)  # let the client and the store go idle
            conn.send({"puts": puts, "sent": sent, "calls": calls})

    asyncio.run(main())


def client_process(conn: Any) -> None:
    """One subscribed socket; records when each event frame arrives (before parsing it)."""
    import aiohttp
    import jwt
    import orjson

    ws_url = conn.recv()

    async def main() -> None:
        token = jwt.encode(
            {"sub": "latency-client", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256"
        )
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{ws_url}?token={token}") as ws,
        ):
            await ws.send_str(orjson.dumps({"type": "subscribe", "resource": RESOURCE}).decode())
            while True:
                msg = orjson.loads((await ws.receive()).data)
                if msg["type"] == "subscribed":
                    break
                if msg["type"] == "error":
                    raise RuntimeError(f"subscribe failed: {msg}")
            conn.send("subscribed")
            received: dict[int, float] = {}
            while True:
                raw = await ws.receive()
                t1 = time.monotonic()
                if raw.type is not aiohttp.WSMsgType.TEXT:
                    break
                msg = orjson.loads(raw.data)
                if msg["type"] == "event":
                    n = msg["data"]["n"]
                    received[n] = t1
                    if n == -2:  # the parent's "flush" marker
                        conn.send(received)
                        received = {}

    asyncio.run(main())


def _round(server: Any, client: Any, start: int, count: int) -> dict[str, float]:
    """``count`` interleaved samples; p50/p99 of insert-to-event and of the bare PUT (ms)."""
    server.send(("sample", start, count))
    sampled = server.recv(120)
    server.send(("sample", -2, 1))  # a marker event: the client reports what it received
    server.recv(60)
    received = client.recv(60)
    missing = [n for n in sampled["sent"] if n not in received]
    if missing:
        raise RuntimeError(f"events never arrived: {missing[:5]}")
    event_ms = [(received[n] - t0) * 1000 for n, t0 in sampled["sent"].items()]
    put_ms = [s * 1000 for s in sampled["puts"]]
    call_ms = [s * 1000 for s in sampled["calls"]]
    return {
        "event_p50": percentile(event_ms, 50),
        "event_p99": percentile(event_ms, 99),
        "put_p50": percentile(put_ms, 50),
        "put_p99": percentile(put_ms, 99),
        "call_p50": percentile(call_ms, 50),
    }


def _measure(quick: bool) -> tuple[list[dict[str, float]], dict[str, Any]]:
    reps, per_rep = (3, 12) if quick else (5, 60)
    # Both children import while SeaweedFS starts, then learn where to connect.
    with spawn(server_process) as server, spawn(client_process) as client, s3_server() as s3:
        server.send(s3.url("latency"))
        client.send(f"ws://127.0.0.1:{server.recv(60)['port']}/")
        client.recv(60)
        rounds = [_round(server, client, rep * per_rep, per_rep) for rep in range(reps)]
        server.send(("stop",))
        server.recv(30)
    return rounds, {"reps": reps, "samples_per_rep": per_rep, "cpus": os.cpu_count()}


def run(quick: bool) -> list[Result]:
    rounds, params = _measure(quick)
    results = []
    for pct, target in (("p50", Target("<=", 2.0)), ("p99", None)):
        ours = Stat.of(r[f"event_{pct}"] for r in rounds)
        bare = Stat.of(r[f"put_{pct}"] for r in rounds)
        results.append(
            Result(
                name=f"insert-to-event {pct} vs bare PUT (SeaweedFS)",
                params={**params, "insert": "core, in the server process"},
                unit="ms",
                ours=ours,
                baseline=bare,
                ratio=statistics.median(r[f"event_{pct}"] - r[f"put_{pct}"] for r in rounds),
                ratio_of="median over reps of (ours - baseline): ms added",
                target=target,
                extra={
                    "added_ms_per_rep": [
                        round(r[f"event_{pct}"] - r[f"put_{pct}"], 3) for r in rounds
                    ],
                    "insert_call_p50_ms": [round(r["call_p50"], 3) for r in rounds],
                    "rounds": rounds,
                },
                notes=["ratio = ms added over the bare PUT"] if pct == "p50" else [],
            )
        )
    return results
