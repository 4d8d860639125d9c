"""Filtered fan-out: server CPU per event with 10,000 subscriptions vs with 1,000.

Two server processes, both ours (a ``Database("memory://...")`` plus ``WebSocketPlugin``, the
writer inserting chat messages through the core in the server process), each with 1,000 sockets
held by the same client processes (``bench.fanout``); only the subscriptions differ, and both
cases have the same number of matching subscribers per event (``MATCHING``, 10):

- 1k: every connection subscribes to one room, ``{"roomId": "r<c % 100>"}``: 1,000
  subscriptions over 100 rooms, 10 per room;
- 10k: every connection subscribes to 10 distinct rooms, ``r<(c + 100 j) % 1000>``: 10,000
  subscriptions over 1,000 rooms, 10 per room, each room's 10 on 10 different connections.

Events go to random rooms that have subscribers (a fixed seed, the same sequence shape for
both), so each event reaches exactly 10 connections. With an equality index the cost grows with
the matching subscribers, not with all of them: the target is 10k/1k <= 1.5. Bursts alternate
between the two servers; server CPU comes from the server process's own CPU clock.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

from .fanout import CLIENT_PROCS, RESOURCE, client_bottleneck_note, rig
from .harness import Result, Stat, Target

MATCHING = 10  # subscriptions per room, so matching connections per event, in both cases
WINDOW_EVENTS = 200  # few frames per event: a wide window keeps the writer from ever waiting


def _subscribe(room: int) -> bytes:
    return orjson.dumps(
        {"type": "subscribe", "resource": RESOURCE, "filter": {"roomId": f"r{room}"}}
    )


def plans(connections: int) -> tuple[list[list[int]], list[list[int]]]:
    """Rooms each connection subscribes to: (1k case, 10k case), for ``connections`` sockets."""
    small_rooms = connections // MATCHING
    small = [[c % small_rooms] for c in range(connections)]
    large = [
        [(c + small_rooms * j) % connections for j in range(MATCHING)] for c in range(connections)
    ]
    return small, large


def run(quick: bool) -> list[Result]:
    connections = 50 if quick else 1000
    events = 100 if quick else 3000
    reps = 2 if quick else 7
    cases = plans(connections)
    rng = random.Random(1234)
    with rig(["ours", "ours"], "filtered") as r:
        room_seqs: list[list[int]] = []
        members: list[dict[int, list[int]]] = []
        for g, plan in enumerate(cases):
            r.connect(
                g, [[_subscribe(room) for room in rooms] for rooms in plan], sample_every=10**9
            )
            by_room: dict[int, list[int]] = {}
            for c, rooms in enumerate(plan):
                for room in rooms:
                    by_room.setdefault(room, []).append(c)
            assert all(len(m) == MATCHING for m in by_room.values())
            members.append(by_room)
            room_seqs.append([rng.choice(sorted(by_room)) for _ in range(events)])

        def one(g: int, n: int | None = None) -> dict[str, Any]:
            rooms = room_seqs[g][:n] if n else room_seqs[g]
            per_proc = [0] * CLIENT_PROCS
            for room in rooms:
                for c in members[g][room]:
                    per_proc[next(p for p, s in enumerate(r.shares[g]) if c in s)] += 1
            burst = {
                "events": len(rooms),
                "frames_per_event": MATCHING,
                "window": WINDOW_EVENTS,
                "rooms": [f"r{room}" for room in rooms],
            }
            return r.burst(g, burst, per_proc, timeout=60.0)

        for g in range(2):  # warm-up
            one(g, max(10, events // 10))
        runs: list[list[dict[str, Any]]] = [[], []]
        for rep in range(reps):  # alternate which goes first, so neither always follows the other
            for g in (0, 1) if rep % 2 == 0 else (1, 0):
                runs[g].append(one(g))

    def us_per_event(run: dict[str, Any]) -> float:
        return run["server_cpu"] / events * 1e6

    small, large = (Stat.of(us_per_event(x) for x in runs[g]) for g in range(2))
    extra: dict[str, Any] = {}
    for g, label in ((0, "1k"), (1, "10k")):
        fan = sum(x["fanout_seconds"] for x in runs[g]) / sum(x["fanout_changes"] for x in runs[g])
        extra[f"fanout_us_per_change_{label}"] = round(fan * 1e6, 2)
        extra[f"events_per_s_{label}"] = round(
            Stat.of(events / x["wall"] for x in runs[g]).median, 1
        )
        extra[f"frames_{label}"] = [x["frames"] for x in runs[g]]
        extra[f"frames_expected_{label}"] = [x["expected"] for x in runs[g]]
    extra["paired_ratio_median"] = round(
        Stat.of(
            us_per_event(b) / us_per_event(a) for a, b in zip(runs[0], runs[1], strict=True)
        ).median,
        3,
    )
    extra["fanout_ratio_10k_over_1k"] = round(
        extra["fanout_us_per_change_10k"] / extra["fanout_us_per_change_1k"], 3
    )
    notes = [
        "server CPU per event (insert through the core + fan-out to 10 matching connections);"
        f" fan-out alone (plugin histogram, wall): 1k {extra['fanout_us_per_change_1k']} us,"
        f" 10k {extra['fanout_us_per_change_10k']} us per change",
    ]
    for g, label in ((0, "1k"), (1, "10k")):
        notes.append(client_bottleneck_note(runs[g], label))
        bad = [x for x in runs[g] if x["frames"] != x["expected"]]
        if bad:
            notes.append(f"{label}: {len(bad)} burst(s) delivered fewer frames than expected")
    return [
        Result(
            name="filtered",
            params={
                "connections": connections,
                "subscriptions": [sum(map(len, cases[0])), sum(map(len, cases[1]))],
                "rooms": [connections // MATCHING, connections],
                "matching_per_event": MATCHING,
                "events_per_burst": events,
            },
            unit="server us CPU/event",
            ours=large,
            baseline=small,
            ratio_of="10k subscriptions / 1k subscriptions",
            target=Target("<=", 1.5),
            extra=extra,
            notes=notes,
        )
    ]
