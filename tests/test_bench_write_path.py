"""The write-path benchmark runs (quick mode) and gives a well-formed row per operation, with
and without a change listener."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not an installed package

from bench import write_path  # noqa: E402


def test_write_path_quick_reports_every_operation_against_a_bare_put():
    results = write_path.run(quick=True)
    assert [(r.params["op"], r.params["listener"]) for r in results] == [
        (op, listening) for listening in (False, True) for op in write_path.OPERATIONS
    ]
    for r in results:
        assert r.unit == "us/call" and r.ours.median > 0 and r.baseline is not None
        assert r.ratio is not None and r.ratio > 0 and r.target is None
        json.dumps(r.to_json())
