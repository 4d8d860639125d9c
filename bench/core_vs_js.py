"""Core operations on ``memory://``: ours against s3db.js (the JavaScript project we follow).

Both sides get the same resource (four fields, a partition on ``roomId``), insert the same
records one at a time, then run get, ``list(limit=100)`` (100 full records) and the partitioned
equality query ``{"roomId": r}`` (every record of one room: 100 of them in full mode). Each
runtime times itself (ops/s, every operation awaited before the next) in its own process, one
after the other; the ratio per operation is our ops/s over s3db.js's (target >= 2).

s3db.js is fetched at benchmark time into a temporary folder: ``npm pack s3db.js@21.6.2``, its
``package/`` unpacked as ``node_modules/s3db.js`` beside the few dependencies its memory client
needs (its full install fails: some dependencies are not on the registry). None of its code is
kept. Our driver script for it is ``bench/js/s3db_js_bench.mjs``. Quick mode skips it (no
network in tests) and measures only our side.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from .harness import Result, Stat, Target, spawn

S3DB_JS = "s3db.js@21.6.2"
S3DB_JS_DEPS = (
    "json-stable-stringify@1.3.0",
    "lodash-es",
    "pino@10",
    "pino-pretty@13",
    "fastest-validator@1",
    "jose@6",
)
DRIVER = Path(__file__).with_name("js") / "s3db_js_bench.mjs"
# Give up on an unreachable registry in well under a minute rather than npm's default retries.
_NPM_NETWORK = (
    "--fetch-retries=1",
    "--fetch-timeout=20000",
    "--fetch-retry-mintimeout=1000",
    "--fetch-retry-maxtimeout=5000",
)
TARGET = Target(">=", 2.0)
OPERATIONS = (
    ("insert", "insert", "inserts/s"),
    ("get", "get", "gets/s"),
    ("list100", "list(100)", "lists/s"),
    ("query", "partitioned query", "queries/s"),
)
ATTRIBUTES = {
    "roomId": "string|required",
    "title": "string|required",
    "author": "string|required",
    "score": "number",
}
PARTITIONS = {"byRoom": {"fields": {"roomId": "string"}}}
STRIDE = 7919  # a prime: gets walk the ids in a scattered order (same walk as the JS driver)


def config(quick: bool) -> dict[str, Any]:
    if quick:
        return {"insertsPerRep": 100, "reps": 2, "warmupInserts": 50, "rooms": 5, "seconds": 0.1}
    # 600 + 5 * 400 = 2,600 records in 26 rooms: list(100) and each query return 100 records.
    return {"insertsPerRep": 400, "reps": 5, "warmupInserts": 600, "rooms": 26, "seconds": 0.6}


def record(i: int, rooms: int) -> dict[str, Any]:
    """The i-th record (the JS driver builds the same one)."""
    return {
        "roomId": f"room-{i % rooms:03d}",
        "title": f"message number {i} in the benchmark",
        "author": f"author-{i % 7}",
        "score": i,
    }


# -- our side ---------------------------------------------------------------------------------
async def _timed(seconds: float, op) -> float:
    n = 0
    start = now = time.perf_counter()
    end = start + seconds
    while now < end:
        await op(n)
        n += 1
        now = time.perf_counter()
    return n / (now - start)


async def measure_ours(cfg: dict[str, Any]) -> dict[str, Any]:
    """Our side of the comparison, in this process: {op: [ops/s per rep], "checks": {...}}."""
    from s3db_core import Database

    rooms = cfg["rooms"]
    db = Database(f"memory://core-vs-js-{time.monotonic_ns()}/p")
    await db.connect()
    items = await db.create_resource("items", ATTRIBUTES, partitions=PARTITIONS)
    ids: list[str] = []

    async def insert_one() -> None:
        ids.append((await items.insert(record(len(ids), rooms)))["id"])

    out: dict[str, Any] = {"insert": [], "get": [], "list100": [], "query": []}
    for _ in range(cfg["warmupInserts"]):
        await insert_one()
    for _ in range(cfg["reps"]):
        start = time.perf_counter()
        for _ in range(cfg["insertsPerRep"]):
            await insert_one()
        out["insert"].append(cfg["insertsPerRep"] / (time.perf_counter() - start))

    def room(n: int) -> str:
        return f"room-{n % rooms:03d}"

    async def get_op(n: int) -> Any:
        return await items.get(ids[(n * STRIDE) % len(ids)])

    async def list_op(n: int = 0) -> list[dict[str, Any]]:
        return (await items.list(limit=100)).items

    async def query_op(n: int) -> list[dict[str, Any]]:
        return await items.query({"roomId": room(n)})

    warm = max(cfg["seconds"] / 3, 0.05)
    for op in (get_op, list_op, query_op):
        await _timed(warm, op)
    for _ in range(cfg["reps"]):
        out["get"].append(await _timed(cfg["seconds"], get_op))
        out["list100"].append(await _timed(cfg["seconds"], list_op))
        out["query"].append(await _timed(cfg["seconds"], query_op))

    listed, queried, fetched = await list_op(), await query_op(3), await items.get(ids[0])
    out["checks"] = {
        "records": len(ids),
        "listLength": len(listed),
        "listFull": all(all(k in r for k in ATTRIBUTES) for r in listed),
        "queryLength": len(queried),
        "queryRoomOk": all(r["roomId"] == room(3) for r in queried),
        "getOk": fetched["id"] == ids[0] and fetched == {"id": ids[0], **record(0, rooms)},
    }
    await db.disconnect()
    return out


def _ours_child(conn: Any, cfg: dict[str, Any]) -> None:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    conn.send(asyncio.run(measure_ours(cfg)))


# -- s3db.js ----------------------------------------------------------------------------------
class Unavailable(Exception):
    """s3db.js could not be fetched or run here; the message says why."""


def _npm(args: list[str], cwd: Path, timeout: float) -> str:
    try:
        done = subprocess.run(
            ["npm", *args, "--no-audit", "--no-fund", "--loglevel=error", *_NPM_NETWORK],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise Unavailable(f"npm {args[0]} took longer than {timeout:g} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise Unavailable(f"npm {args[0]} failed: {' / '.join(tail)[:300]}")
    return done.stdout


def install_s3db_js(folder: Path) -> Path:
    """Fetch s3db.js and its memory-client dependencies into ``folder``; the database module."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise Unavailable("node/npm not found on PATH")
    (folder / "package.json").write_text('{"name": "s3db-js-bench", "private": true}\n')
    # The dependencies first: a later install would prune the hand-placed s3db.js package.
    _npm(["install", *S3DB_JS_DEPS], folder, timeout=120)
    packed = _npm(["pack", S3DB_JS, "--silent"], folder, timeout=60).strip().splitlines()
    tarball = folder / (packed[-1] if packed else "")
    if not tarball.is_file():
        raise Unavailable(f"npm pack {S3DB_JS} produced no tarball")
    target = folder / "node_modules" / "s3db.js"
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/")]
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse links and odd paths
            tar.extractall(folder / "unpacked", members=members, filter="data")
        else:
            tar.extractall(folder / "unpacked", members=members)
    shutil.move(folder / "unpacked" / "package", target)
    module = target / "dist" / "database.class.js"
    if not module.is_file():
        raise Unavailable(f"{S3DB_JS} has no dist/database.class.js")
    return module


def measure_js(module: Path, cfg: dict[str, Any], timeout: float = 180) -> dict[str, Any]:
    args = ["node", str(DRIVER), json.dumps({**cfg, "databaseModule": str(module)})]
    try:
        done = subprocess.run(
            args, cwd=module.parents[3], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise Unavailable(f"the s3db.js driver took longer than {timeout:g} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-3:]
        raise Unavailable(
            f"the s3db.js driver failed ({done.returncode}): {' / '.join(tail)[:300]}"
        )
    return json.loads(lines[-1])


# -- the benchmark ----------------------------------------------------------------------------
def _check_notes(side: str, checks: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """Notes for anything that shows the two sides did not do the same work."""
    records = cfg["warmupInserts"] + cfg["reps"] * cfg["insertsPerRep"]
    per_room = records // cfg["rooms"]
    problems = []
    if checks.get("records") != records:
        problems.append(f"{checks.get('records')} records, expected {records}")
    if checks.get("listLength") != 100 or not checks.get("listFull"):
        problems.append(
            f"list(100) returned {checks.get('listLength')} records (full: {checks.get('listFull')})"
        )
    if checks.get("queryLength") != per_room or not checks.get("queryRoomOk"):
        problems.append(f"query returned {checks.get('queryLength')} records, expected {per_room}")
    if not checks.get("getOk"):
        problems.append("get did not return the inserted record")
    return [f"{side}: WORK MISMATCH: {p}" for p in problems]


def run(quick: bool) -> list[Result]:
    cfg = config(quick)
    records = cfg["warmupInserts"] + cfg["reps"] * cfg["insertsPerRep"]
    params = {
        "store": "memory://",
        "records": records,
        "rooms": cfg["rooms"],
        "reps": cfg["reps"],
        "s3db.js": S3DB_JS,
    }
    with spawn(_ours_child, cfg) as child:
        ours = child.recv(timeout=300)
    notes = _check_notes("ours", ours["checks"], cfg)

    js: dict[str, Any] | None = None
    if quick:
        notes.append("quick mode: s3db.js not measured (needs npm and the registry)")
    else:
        started = time.monotonic()
        try:
            with tempfile.TemporaryDirectory(prefix="s3db-js-bench-") as tmp:
                module = install_s3db_js(Path(tmp))
                installed = time.monotonic() - started
                js = measure_js(module, cfg)
            notes += _check_notes("s3db.js", js["checks"], cfg)
            notes.append(
                f"s3db.js on node {js['checks'].get('node')} (fetched in {installed:.1f} s);"
                " asyncPartitions=false so its insert also awaits the partition reference"
            )
        except Unavailable as exc:
            notes.append(f"s3db.js not measured: {exc}")
        except (OSError, ValueError, KeyError) as exc:
            notes.append(f"s3db.js not measured: {type(exc).__name__}: {exc}")
            js = None

    results = []
    for i, (key, label, unit) in enumerate(OPERATIONS):
        baseline = Stat.of(js[key]) if js is not None else None
        results.append(
            Result(
                name=f"core {label} vs s3db.js",
                params={**params, "op": key},
                unit=unit,
                ours=Stat.of(ours[key]),
                baseline=baseline,
                ratio_of="our ops/s / s3db.js ops/s",
                target=TARGET,
                notes=list(notes) if i == 0 else [],
            )
        )
    return results
