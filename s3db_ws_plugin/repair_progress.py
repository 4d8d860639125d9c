"""How ``s3db repair`` shows a repair as it goes (``Database.repair(progress=...)`` reports it,
silently; this renders it on stderr, beside the JSON report on stdout).

- On a terminal: one status line rewritten in place at most ``TERMINAL_INTERVAL`` apart (keys
  read, rate, what was found so far), then a summary line.
- Otherwise (a log file, a pipe, CI): a ``repair progress`` log line every ``every_keys`` keys
  or ``LOG_INTERVAL`` seconds, whichever comes first, then ``repair done``.
"""

from __future__ import annotations

import shutil
import time
from typing import Any, TextIO

from s3db_core.log import get_logger
from s3db_core.repair import RepairProgress

log = get_logger("s3db.cli")

TERMINAL_INTERVAL = 0.2  # seconds between two redraws of the status line
LOG_INTERVAL = 10.0  # seconds between two progress log lines at most
DEFAULT_EVERY_KEYS = 10_000


def _rate(p: RepairProgress) -> float:
    elapsed = p.elapsed
    return p.keys / elapsed if elapsed > 0 else 0.0


def status_line(p: RepairProgress) -> str:
    """``repair notes (records): 12,345 keys, 2,310/s; 12,000 records, 0 damaged, ...``"""
    where = f"{p.resource} ({p.phase})" if p.resource else p.phase
    return (
        f"repair {where}: {p.keys:,} keys, {_rate(p):,.0f}/s; {p.records:,} records, "
        f"{p.damaged:,} damaged, references {p.references_missing:,} missing "
        f"/ {p.references_stale:,} stale"
    )


def summary_line(p: RepairProgress) -> str:
    """The last line: how long, how much, and what was done (or would be, with ``dry_run``)."""
    head = (
        f"repair done in {p.elapsed:.1f} s: {p.keys:,} keys ({_rate(p):,.0f}/s), "
        f"{p.records:,} records; {p.damaged:,} damaged, "
    )
    missing, stale, temp = p.references_missing, p.references_stale, p.temp_files_removed
    if p.dry_run:
        return head + (
            f"{missing:,} references to add, {stale:,} stale references to remove, "
            f"{temp:,} temp files to remove (dry run: nothing changed)"
        )
    return head + (
        f"{missing:,} references added, {stale:,} stale references removed, "
        f"{temp:,} temp files removed"
    )


class TerminalProgress:
    """The status line on a terminal ``stream``, redrawn in place (``\\r``, cleared to the end
    of the line and cut to the terminal's width so it never wraps)."""

    def __init__(self, stream: TextIO, interval: float = TERMINAL_INTERVAL) -> None:
        self.stream = stream
        self.interval = interval
        self._last = float("-inf")

    def __call__(self, p: RepairProgress) -> None:
        if p.phase == "done":
            self.stream.write("\r\x1b[K" + summary_line(p) + "\n")
            self.stream.flush()
            return
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        width = shutil.get_terminal_size((100, 24)).columns - 1
        self.stream.write("\r" + status_line(p)[:width] + "\x1b[K")
        self.stream.flush()


class LogProgress:
    """A ``repair progress`` log line every ``every_keys`` keys or ``interval`` seconds, and a
    ``repair done`` line at the end (JSON lines when stderr is not a terminal)."""

    def __init__(self, every_keys: int = DEFAULT_EVERY_KEYS, interval: float = LOG_INTERVAL) -> None:
        self.every_keys = every_keys
        self.interval = interval
        self._keys = 0
        self._time = time.monotonic()

    @staticmethod
    def fields(p: RepairProgress) -> dict[str, Any]:
        return {
            "resource": p.resource or None,
            "phase": p.phase,
            "keys": p.keys,
            "keys_per_second": round(_rate(p), 1),
            "records": p.records,
            "damaged": p.damaged,
            "references_missing": p.references_missing,
            "references_stale": p.references_stale,
            "elapsed": round(p.elapsed, 3),
        }

    def __call__(self, p: RepairProgress) -> None:
        if p.phase == "done":
            fields = self.fields(p)
            del fields["resource"], fields["phase"]
            log.info(
                "repair done",
                **fields,
                temp_files_removed=p.temp_files_removed,
                dry_run=p.dry_run,
            )
            return
        now = time.monotonic()
        if p.keys - self._keys < self.every_keys and now - self._time < self.interval:
            return
        self._keys, self._time = p.keys, now
        log.info("repair progress", **self.fields(p))


def progress_for(stream: TextIO, every_keys: int = DEFAULT_EVERY_KEYS) -> Any:
    """The renderer for ``stream``: a live line on a terminal, log lines otherwise."""
    if stream.isatty():
        return TerminalProgress(stream)
    return LogProgress(every_keys)
