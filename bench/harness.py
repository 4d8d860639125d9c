"""What every benchmark shares: results with medians, targets, processes and their costs.

A benchmark module exposes ``run(quick: bool) -> list[Result]``. It measures ours and its
baseline in the same run (same machine, same moment), repeats each measurement a few times and
reports medians with min and max; the ratio is always median-of-ours against median-of-baseline,
so a number means the same thing on any machine. ``quick`` shrinks every size so the suite can
check that a benchmark still runs without spending the time to measure anything well.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import resource
import socket
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stat:
    """Median, min and max of repeated measurements (``n`` of them)."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, samples: Iterable[float]) -> Stat:
        values = [float(s) for s in samples]
        if not values:
            raise ValueError("no samples")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def __str__(self) -> str:
        return f"{fmt(self.median)} [{fmt(self.min)}..{fmt(self.max)}]"


@dataclass(frozen=True)
class Target:
    """A bound on a ratio: ``Target(">=", 0.7)`` or ``Target("<=", 1.5)``."""

    op: str
    value: float

    def __post_init__(self) -> None:
        if self.op not in (">=", "<="):
            raise ValueError(f"target op must be >= or <=, not {self.op!r}")

    def met(self, ratio: float) -> bool:
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def __str__(self) -> str:
        return f"{self.op} {fmt(self.value)}"


@dataclass
class Result:
    """One benchmark's row: what was measured, against what, and whether the target holds.

    ``ours`` and ``baseline`` are in ``unit``; ``ratio`` is what ``target`` bounds (for most rows
    ours/baseline, for differences such as added latency it is the difference itself, said in
    ``ratio_of``). ``extra`` holds further numbers (p99s, per-connection sizes, ...) and
    ``notes`` what a reader must know, such as the load generator having been the bottleneck.
    """

    name: str
    params: dict[str, Any]
    unit: str
    ours: Stat
    baseline: Stat | None = None
    ratio: float | None = None
    ratio_of: str = "ours / baseline"
    target: Target | None = None
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline is not None and self.baseline.median:
            self.ratio = self.ours.median / self.baseline.median
        if self.met is None and self.target is not None and self.ratio is not None:
            self.met = self.target.met(self.ratio)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = str(self.target) if self.target is not None else None
        return data


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01 or magnitude == 0:
        return f"{value:.2f}"
    return f"{value:.2e}"


def table(results: list[Result]) -> str:
    """A plain-text table: one line per result, notes indented beneath."""
    headers = (
        "benchmark",
        "unit",
        "ours (median [min..max])",
        "baseline",
        "ratio",
        "target",
        "met",
    )
    rows = []
    for r in results:
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        rows.append(
            (
                r.name, r.unit, str(r.ours), str(r.baseline) if r.baseline else "-",
                fmt(r.ratio), str(r.target) if r.target else "-", met,
            )
        )  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r, row in zip(results, rows, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        lines.extend(f"    {note}" for note in r.notes)
    return "\n".join(lines)


# -- measuring --------------------------------------------------------------------------------
def repeat(measure: Callable[[], float], times: int, warmup: int = 1) -> Stat:
    """Run ``measure`` ``warmup`` times unrecorded, then ``times`` times into a ``Stat``."""
    for _ in range(warmup):
        measure()
    return Stat.of(measure() for _ in range(times))


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile (0-100) by nearest rank; ``values`` need not be sorted."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds a process has used so far (this one by default)."""
    if pid is None or pid == os.getpid():
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default)."""
    with open(f"/proc/{pid or 'self'}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file soft limit towards ``wanted``; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        return new
    return soft


async def serve_websocket(handler: Callable[..., Any]) -> tuple[Any, int]:
    """Serve ``handler`` at ``/`` on a free loopback port (the bare-aiohttp baselines); returns
    the ``AppRunner`` (``await runner.cleanup()`` stops it) and the port."""
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- processes --------------------------------------------------------------------------------
_ctx = mp.get_context("spawn")


@dataclass
class Child:
    """A process started by ``spawn``: its pid, and a pipe for messages both ways."""

    process: Any
    conn: Any

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, message: Any) -> None:
        self.conn.send(message)

    def recv(self, timeout: float = 120.0) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"child {self.pid} sent nothing in {timeout} s")
        message = self.conn.recv()
        if isinstance(message, dict) and message.get("error"):
            raise RuntimeError(f"child {self.pid} failed: {message['error']}")
        return message

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)


def _child_main(target: Callable[..., Any], conn: Any, args: tuple, kwargs: dict) -> None:
    try:
        target(conn, *args, **kwargs)
    except BaseException as e:  # reported to the parent, which raises it in recv()
        import traceback

        with contextlib.suppress(Exception):
            conn.send({"error": f"{e!r}\n{traceback.format_exc()}"})
        raise


@contextlib.contextmanager
def spawn(target: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Child]:
    """Run ``target(conn, *args, **kwargs)`` in a fresh process (a module-level function).

    The child talks to the parent over ``conn`` (a ``multiprocessing`` pipe end); leaving the
    block ends it (terminate, then kill).
    """
    parent, child = _ctx.Pipe()
    process = _ctx.Process(target=_child_main, args=(target, child, args, kwargs), daemon=True)
    process.start()
    child.close()
    try:
        yield Child(process, parent)
    finally:
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        parent.close()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


# -- real S3 server ---------------------------------------------------------------------------
@contextlib.contextmanager
def s3_server() -> Iterator[Any]:
    """A SeaweedFS ``weed mini`` (``tests/s3server.py``) for the block; stopped on leaving it.

    Yields its ``S3Server``: ``.url(prefix)`` is a connection string for a fresh key prefix.
    """
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "tests" / "s3server.py"
    module = sys.modules.get("s3server")
    if module is None:
        spec = importlib.util.spec_from_file_location("s3server", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["s3server"] = module
        spec.loader.exec_module(module)
    server = module.start_s3_server()
    try:
        yield server
    finally:
        server.stop(grace=1.0)  # a benchmark's data need not survive
