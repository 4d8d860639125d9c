"""``python -m bench [--quick] [--only NAME ...] [--out FILE]``: run, print a table, write JSON.

Every module in ``BENCHMARKS`` has ``run(quick: bool) -> list[Result]``. A benchmark that fails
is reported (and makes the exit status 1) without stopping the others.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from .harness import Result, table

BENCHMARKS = (
    "store_requests",
    "core_vs_js",
    "write_path",
    "requests",
    "fanout",
    "filtered",
    "memory",
    "latency",
    "broker_memory",
    "scaleout",
    "cache",
    "watch",
    "channel_fanout",
    "channel_latency",
    "channel_store",
    "channel_presence",
)
DEFAULT_OUT = Path(__file__).with_name("results.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    results: list[Result] = []
    failures: dict[str, str] = {}
    timings: dict[str, float] = {}
    started = time.time()
    for name in args.only or BENCHMARKS:
        print(f"== {name}", flush=True)
        t0 = time.monotonic()
        try:
            module = importlib.import_module(f"bench.{name}")
            produced = module.run(quick=args.quick)
        except Exception:
            failures[name] = traceback.format_exc()
            print(failures[name], file=sys.stderr, flush=True)
        else:
            results.extend(produced)
            print(table(produced), flush=True)
        timings[name] = round(time.monotonic() - t0, 1)
        print(f"   ({timings[name]} s)", flush=True)

    print()
    print(table(results) if results else "no results")
    missed = [r.name for r in results if r.met is False]
    if missed:
        print(f"\ntargets missed: {', '.join(missed)}")
    for name in failures:
        print(f"benchmark failed: {name}")
    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "timings": timings,
        "results": [r.to_json() for r in results],
        "failures": failures,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
