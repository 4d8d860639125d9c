"""Hostile clients get nowhere: bounded filters, capped subscriptions, list budgets, chosen ids,
clipped logs, a fan-out nothing can break, /metrics off the public listener, and a bystander
whose pings stay fast while someone attacks the server.

Frames are sent with the independent `websockets` library: the subject is what a client can
send and what it gets back, byte for byte.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import time
import uuid
from typing import Any

import aiohttp
import structlog
from ws_helpers import JWT_AUTH, connect, make_token, notes_resource, serve

from s3db_core import Change, Database
from s3db_ws_plugin import WebSocketPlugin
from s3db_ws_plugin.limits import DEFAULT_LIST_SCAN_LIMIT


def tenant_only(user, filter):
    return {"tenantId": user.tenantId}


async def scores(db):
    await db.create_resource(
        "scores",
        {"player": "string|required", "points": "number|required", "blob": "string|optional"},
    )


# -- filters ------------------------------------------------------------------------------------
async def test_filters_over_a_limit_are_invalid_message_naming_it():
    async with serve(notes_resource, resources={"notes": True}) as (_, plugin):
        async with connect(plugin.url) as client:
            cases = [
                ({f"k{i}": i for i in range(65)}, "keys", 64),
                ({"score": {"$in": list(range(1000))}}, "in", 256),
                ({"title": "x" * 20_000}, "size", 16384),
                ({"$or": [{"$or": [{"$or": [{"$or": [{"$or": [{"a": 1}]}]}]}]}]}, "depth", 10),
            ]
            for filter, limit, maximum in cases:
                for kind in ("list", "subscribe"):
                    error = await client.call(kind, resource="notes", filter=filter)
                    assert error["code"] == "INVALID_MESSAGE", error
                    assert error["details"]["field"] == "filter"
                    assert (error["details"]["limit"], error["details"]["max"]) == (limit, maximum)
            # Nothing was subscribed, and the connection still works.
            assert (await client.call("ping"))["type"] == "pong"


async def test_a_frame_of_too_many_values_is_refused_before_it_is_parsed():
    """The ~1 MB list frame whose filter has 33k keys costs more to parse than anything a
    frame should; its separators are counted instead and it is refused unparsed."""
    async with serve(notes_resource, resources={"notes": True}) as (_, plugin):
        async with connect(plugin.url) as client:
            huge = {"type": "list", "resource": "notes", "requestId": 1}
            huge["filter"] = {f"field{i:05d}": i for i in range(33_000)}
            await client.send(huge)
            error = await client.recv()
            assert error["code"] == "INVALID_MESSAGE"
            assert error["details"] == {
                "field": "",
                "message": "frame holds more than 20000 values",
                "limit": "values",
                "max": 20000,
            }
            # A big frame of few values (one long text) is parsed as usual.
            text = "a long, long text " * 10_000  # 190 KB, 10,000 commas
            reply = await client.call(
                "insert", resource="notes", data={"title": "t", "items": text}
            )
            assert reply["type"] == "inserted"


async def test_filter_limits_are_configurable():
    options = {"filter_limits": {"max_keys": 2}}
    async with serve(notes_resource, resources={"notes": True}, **options) as (_, plugin):
        async with connect(plugin.url) as client:
            ok = await client.call("list", resource="notes", filter={"a": 1, "b": 2})
            assert ok["type"] == "data"
            error = await client.call("list", resource="notes", filter={"a": 1, "b": 2, "c": 3})
            assert error["details"]["limit"] == "keys" and error["details"]["max"] == 2


async def test_a_guards_override_is_bounded_like_the_clients_filter():
    def echo_in(user, filter):  # a guard that turns the client's input into its override
        return {"owner": {"$in": filter.get("owners", [])}}

    resources = {"notes": {"guard": {"subscribe": echo_in}}}
    async with serve(notes_resource, resources=resources) as (_, plugin):
        async with connect(plugin.url) as client:
            error = await client.call(
                "subscribe", resource="notes", filter={"owners": [f"u{i}" for i in range(300)]}
            )
            assert error["code"] == "INVALID_MESSAGE" and error["details"]["limit"] == "in"


async def test_a_protected_field_cannot_be_filtered_on_inside_or_and():
    resources = {"notes": {"protected": ["password"]}}
    async with serve(notes_resource, resources=resources) as (db, plugin):
        await db.resources.notes.insert({"title": "t", "password": "hunter2"})
        async with connect(plugin.url) as client:
            for filter in (
                {"$or": [{"password": "hunter2"}, {"title": "nope"}]},
                {"$and": [{"title": "t"}, {"$or": [{"password": {"$gt": "h"}}]}]},
            ):
                error = await client.call("list", resource="notes", filter=filter)
                assert error["code"] == "FORBIDDEN" and error["details"]["field"] == "password"


async def test_or_and_work_over_the_socket_and_subscriptions_using_them_get_events():
    async with serve(notes_resource, resources={"notes": True}) as (db, plugin):
        async with connect(plugin.url) as client:
            either = {"$or": [{"owner": "ann"}, {"status": "open"}]}
            assert (await client.call("subscribe", resource="notes", filter=either))["type"] == (
                "subscribed"
            )
            await db.resources.notes.insert({"title": "a", "owner": "ann"})
            await db.resources.notes.insert({"title": "b", "owner": "bo"})
            await db.resources.notes.insert({"title": "c", "owner": "bo", "status": "open"})
            assert [e["data"]["title"] for e in await client.events()] == ["a", "c"]
            page = await client.call("list", resource="notes", filter=either)
            assert [r["title"] for r in page["data"]] == ["a", "c"]
            sub = next(iter(next(iter(plugin.connections)).subscriptions))
            assert sub.term is None  # $or goes to the residual filters, not the index


async def test_subscriptions_per_connection_are_capped():
    async with serve(notes_resource, resources={"notes": True}, max_subscriptions=3) as (_, p):
        async with connect(p.url) as client:
            for i in range(3):
                reply = await client.call("subscribe", resource="notes", filter={"owner": f"u{i}"})
                assert reply["type"] == "subscribed"
            error = await client.call("subscribe", resource="notes", filter={"owner": "u9"})
            assert error["code"] == "FORBIDDEN" and error["details"] == {"limit": 3}
            # Re-subscribing with a filter it holds replaces, so it is not refused.
            again = await client.call("subscribe", resource="notes", filter={"owner": "u1"})
            assert again["type"] == "subscribed"


async def test_a_subscription_at_the_limits_pins_little_memory():
    import tracemalloc

    big = {
        "owner": {"$in": [f"{i:040d}" for i in range(256)]},
        **{f"f{i}": f"{i:0100d}" for i in range(20)},
    }
    async with serve(notes_resource, resources={"notes": True}) as (_, plugin):
        async with connect(plugin.url) as client:
            await client.call("subscribe", resource="notes", filter={**big, "n": -1})
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for n in range(20):
                    reply = await client.call("subscribe", resource="notes", filter={**big, "n": n})
                    assert reply["type"] == "subscribed"
                per_subscription = (tracemalloc.get_traced_memory()[0] - before) / 20
            finally:
                tracemalloc.stop()
            # Was ~29 MB for a 1 MB filter; the limits keep it to a few dozen KB.
            assert per_subscription < 200_000, per_subscription


# -- ids, request ids, logs ---------------------------------------------------------------------
async def test_client_chosen_ids_are_refused_unless_the_resource_allows_them():
    resources = {"notes": True, "pinned": {"client_ids": True}}

    async def setup(db):
        await notes_resource(db)
        await db.create_resource("pinned", {"title": "string|required"})

    async with serve(setup, resources=resources) as (db, plugin):
        await db.resources.notes.insert({"id": "taken", "title": "someone else's"})
        async with connect(plugin.url) as client:
            for id in ("taken", "free"):  # the same answer whether the id exists or not
                error = await client.call("insert", resource="notes", data={"id": id, "title": "x"})
                assert error["code"] == "VALIDATION_ERROR"
                assert error["details"] == [
                    {"field": "id", "rule": "client_ids", "message": "ids are chosen by the server"}
                ]
            assert (await db.resources.notes.get("taken"))["title"] == "someone else's"
            made = await client.call("insert", resource="notes", data={"title": "mine"})
            assert made["type"] == "inserted" and len(made["data"]["id"]) == 22
            pinned = await client.call("insert", resource="pinned", data={"id": "p1", "title": "x"})
            assert pinned["data"]["id"] == "p1"


async def test_a_long_request_id_is_refused_and_not_echoed():
    async with serve(notes_resource, resources={"notes": True}) as (_, plugin):
        async with connect(plugin.url) as client:
            ok = await client.request({"type": "ping", "requestId": "r" * 128})
            assert ok["type"] == "pong"
            await client.send({"type": "ping", "requestId": "r" * 129})
            error = await client.recv()
            assert error["code"] == "INVALID_MESSAGE" and "requestId" not in error
            assert error["details"]["field"] == "requestId"


async def test_what_a_client_sends_is_clipped_in_the_logs():
    def boom(user, ctx):
        raise RuntimeError("guard bug")

    resources = {"notes": {"guard": {"list": boom}}}
    async with serve(notes_resource, resources=resources) as (_, plugin):
        async with connect(plugin.url) as client:
            huge = "A" * 500_000
            with structlog.testing.capture_logs(
                processors=[structlog.contextvars.merge_contextvars]
            ) as logs:
                await client.send({"type": "list", "resource": "notes", "requestId": 7, "x": huge})
                await client.recv()
                await client.send({"type": "ping", "requestId": huge})
                await client.recv()
                await client.send({"type": huge[:1000], "requestId": 8})
                await client.recv()
            assert logs
            assert max(len(json.dumps(entry, default=str)) for entry in logs) < 5_000


# -- the fan-out --------------------------------------------------------------------------------
async def test_a_change_that_cannot_be_encoded_breaks_nothing():
    """A record nested ~970 deep (stored by another writer, or before input limits existed):
    the fan-out logs it with an error id and keeps serving every later change."""
    async with serve(notes_resource, resources={"notes": {"protected": ["profile.ssn"]}}) as (
        db,
        plugin,
    ):
        async with connect(plugin.url) as client:
            await client.call("subscribe", resource="notes")
            deep: Any = {"ssn": "123"}
            for _ in range(970):
                deep = {"profile": deep}
            record = {"id": "deep", "title": "d", "profile": deep}
            with structlog.testing.capture_logs() as logs:
                plugin.s3db_change(Change("notes", "insert", record, None, 0))  # must not raise
            failures = [e for e in logs if e.get("error_id")]
            assert failures and failures[0]["log_level"] == "error"
            await db.resources.notes.insert({"title": "after"})
            assert [e["data"]["title"] for e in await client.events()] == ["after"]


# -- list budgets -------------------------------------------------------------------------------
async def test_a_filter_matching_nothing_reads_a_bounded_number_of_records_per_frame():
    async with serve(scores, resources={"scores": True}, list_scan_limit=100) as (db, plugin):
        for i in range(600):
            await db.resources.scores.insert({"player": f"p{i}", "points": i})
        async with connect(plugin.url) as client:
            storage = db.storage
            cursor, frames = None, 0
            while True:
                storage.requests.reset()
                page = await client.call(
                    "list", resource="scores", filter={"player": "nobody"}, cursor=cursor
                )
                frames += 1
                assert page["data"] == [] and storage.requests["GET"] <= 100
                cursor = page["cursor"]
                if cursor is None:
                    break
            assert frames == 6
            # An unfiltered page is cut by the same budget, and its cursor continues it.
            page = await client.call("list", resource="scores", limit=1000)
            assert len(page["data"]) == 100 and page["cursor"]
            rest = await client.call("list", resource="scores", limit=5, cursor=page["cursor"])
            assert [r["points"] for r in rest["data"]] == [100, 101, 102, 103, 104]


async def test_the_default_scan_budget_is_below_the_largest_page():
    assert DEFAULT_LIST_SCAN_LIMIT < 1000


async def test_a_reply_is_bounded_in_bytes_and_continues_with_a_cursor():
    async with serve(scores, resources={"scores": True}, list_max_bytes=50_000) as (db, plugin):
        for i in range(12):
            await db.resources.scores.insert({"player": f"p{i}", "points": i, "blob": "z" * 20_000})
        async with connect(plugin.url) as client:
            got, cursor, sizes = [], None, []
            while True:
                await client.send(
                    {"type": "list", "resource": "scores", "requestId": 1, "cursor": cursor}
                )
                text = await asyncio.wait_for(client.ws.recv(), 5)
                sizes.append(len(text))
                page = json.loads(text)
                got += [r["points"] for r in page["data"]]
                cursor = page["cursor"]
                if cursor is None:
                    break
            assert got == list(range(12))
            assert max(sizes) < 50_000 + 21_000 + 200  # the budget, plus the record that reached it
            assert len(sizes) == 4


# -- HTTP ---------------------------------------------------------------------------------------
async def test_metrics_are_off_the_public_listener_unless_enabled():
    async with aiohttp.ClientSession() as http:
        async with serve(notes_resource, resources={"notes": True}) as (_, plugin):
            async with http.get(f"{plugin.http_url}/metrics") as resp:
                assert resp.status == 404
            async with http.get(f"{plugin.http_url}/health") as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "ok"
        options = {"metrics": {"token": "scrape-me"}}
        async with serve(notes_resource, resources={"notes": True}, **options) as (_, plugin):
            url = f"{plugin.http_url}/metrics"
            async with http.get(url) as resp:
                assert resp.status == 401
            async with http.get(url, headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401
            async with http.get(url, headers={"Authorization": "Bearer scrape-me"}) as resp:
                assert resp.status == 200 and "s3db_ws_connections" in await resp.text()


# -- a bystander under attack -------------------------------------------------------------------
async def _ping_times(client, stop: asyncio.Event) -> list[tuple[float, float]]:
    """(wall-clock, CPU) seconds of each ping round trip until ``stop``. The server and both
    clients run in this process, so the CPU this process spent while a ping waited is the work
    that held it up; the wall clock adds whatever other processes of the machine took."""
    times = []
    while not stop.is_set():
        wall, cpu = time.perf_counter(), time.process_time()
        reply = await client.call("ping")
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
        assert reply["type"] == "pong"
        await asyncio.sleep(0.002)
    return times


async def test_a_bystanders_ping_stays_fast_while_the_dos_frames_arrive():
    """The frames of the attacks (a ~1 MB list filter of 33k keys, ~1 MB subscribe filters, a
    filter matching nothing over 600 records, newest-first pages) leave another client's pings
    under 50 ms: each frame is refused or bounded before it costs the event loop much.

    What held each ping up is measured as the CPU time of this process during it (the server
    and the clients live here): on a shared 2-core machine the wall clock also counts the time
    the OS gave to other processes. The wall clock must agree on the median, and is held to
    50 ms at its maximum in at least one of three attack rounds.

    Objects that existed before (imported libraries, earlier tests: botocore alone makes a full
    garbage collection take ~50 ms) are frozen out of the collector, as a long-running server's
    start-up objects are with ``gc.freeze()``: a collection the attack's allocations trigger
    then costs what the attack allocated, not what the test process happens to hold."""
    gc.collect()
    gc.freeze()
    try:
        await _attack_and_ping()
    finally:
        gc.unfreeze()


async def _attack_and_ping() -> None:
    async with serve(scores, resources={"scores": True}) as (db, plugin):
        for i in range(600):
            await db.resources.scores.insert({"player": f"p{i}", "points": i})
        huge_filter = {f"field{i:05d}": i for i in range(33_000)}
        # Under the frame's value bound, so parsed: then refused by the filter limits.
        big_in = {"player": {"$in": [f"{i:060d}" for i in range(15_000)]}}
        attacks: list[dict[str, Any]] = [
            {"type": "list", "resource": "scores", "filter": huge_filter},
            {"type": "subscribe", "resource": "scores", "filter": big_in},
            {"type": "list", "resource": "scores", "filter": {"player": "nobody"}, "limit": 1000},
            {"type": "list", "resource": "scores", "order": "desc", "limit": 1},
        ]
        encoded = [json.dumps({**frame, "requestId": 1}) for frame in attacks]
        assert max(len(e) for e in encoded) > 500_000
        async with (
            connect(plugin.url) as attacker,
            connect(plugin.url) as bystander,
        ):
            walls: list[float] = []
            for _attempt in range(3):
                stop = asyncio.Event()
                pinger = asyncio.create_task(_ping_times(bystander, stop))
                answers = []
                try:
                    for _ in range(5):
                        for frame in encoded:
                            await attacker.send(frame)
                            answers.append(await attacker.recv(timeout=10))
                finally:
                    stop.set()
                    times = await pinger
                codes = [a.get("code", a["type"]) for a in answers]
                assert codes[:4] == ["INVALID_MESSAGE", "INVALID_MESSAGE", "data", "data"]
                assert len(times) >= 5
                cpu = max(c for _, c in times)
                assert cpu < 0.050, (cpu, statistics.median(c for _, c in times))
                walls = [w for w, _ in times]
                assert statistics.median(walls) < 0.050, statistics.median(walls)
                if max(walls) < 0.050:
                    break
        assert max(walls) < 0.050, (max(walls), statistics.median(walls))


async def test_signed_in_attackers_are_held_to_the_same_bounds():
    resources = {"scores": {"guard": {"subscribe": tenant_only}}}
    async with serve(scores, resources=resources, auth=JWT_AUTH) as (_, plugin):
        async with connect(plugin.url, token=make_token("mal", tenantId="t1")) as mal:
            error = await mal.call(
                "subscribe", resource="scores", filter={f"k{i}": 1 for i in range(100)}
            )
            assert error["code"] == "INVALID_MESSAGE" and error["details"]["limit"] == "keys"


# -- compare-and-set over the socket ------------------------------------------------------------
async def test_update_with_a_stale_version_answers_conflict():
    async with serve(notes_resource, resources={"notes": True}) as (db, plugin):
        async with connect(plugin.url) as client:
            made = await client.call("insert", resource="notes", data={"title": "v1"})
            id = made["data"]["id"]
            got = await client.call("get", resource="notes", id=id)
            assert got["version"] == 1
            first = await client.call(
                "update", resource="notes", id=id, data={"title": "v2"}, version=1
            )
            assert first["type"] == "updated" and first["data"]["title"] == "v2"
            stale = await client.call(
                "update", resource="notes", id=id, data={"title": "lost"}, version=1
            )
            assert stale["code"] == "CONFLICT"
            assert (await db.resources.notes.get(id))["title"] == "v2"
            assert (await client.call("get", resource="notes", id=id))["version"] == 2
            for bad in (0, "2", True, 1.5):
                error = await client.call(
                    "update", resource="notes", id=id, data={"title": "x"}, version=bad
                )
                assert error["code"] == "INVALID_MESSAGE" and error["details"]["field"] == "version"
            # Without a version, an update still merges into whatever is current.
            plain = await client.call("update", resource="notes", id=id, data={"status": "ok"})
            assert plain["data"] == {**plain["data"], "title": "v2", "status": "ok"}


async def test_an_update_that_loses_a_race_is_guarded_again_against_the_newer_record():
    """The update guard decided on the record it read; if another write lands first, the guard
    runs again on the record actually replaced (here the owner changed meanwhile)."""
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def owner_only(user, ctx):
        if ctx.record is not None and ctx.record.get("owner") == "ann" and not gate.is_set():
            entered.set()
            await gate.wait()  # hold the first decision while the owner changes
        return ctx.record is None or ctx.record.get("owner") == "ann"

    resources = {"notes": {"guard": {"update": owner_only}}}
    async with serve(notes_resource, resources=resources) as (db, plugin):
        note = await db.resources.notes.insert({"title": "t", "owner": "ann"})
        async with connect(plugin.url) as client:
            await client.send(
                {
                    "type": "update",
                    "requestId": "u",
                    "resource": "notes",
                    "id": note["id"],
                    "data": {"title": "ann's edit"},
                }
            )
            await asyncio.wait_for(entered.wait(), 5)
            await db.resources.notes.update(note["id"], {"owner": "bob"})
            gate.set()
            answer = await client.recv()
            assert answer["requestId"] == "u" and answer["code"] == "FORBIDDEN"
            assert (await db.resources.notes.get(note["id"]))["title"] == "t"


async def test_a_record_stored_600_deep_never_breaks_a_list_a_get_or_the_fan_out():
    """A record nested 600 levels (stored by a Database that allowed it) under a nested protected
    path: it used to make every later list answer INTERNAL_ERROR. Now lists, gets and events
    serve it (beyond what orjson nests) with the protected field stripped."""
    db = Database(f"memory://deep-{uuid.uuid4().hex[:8]}", max_depth=2000)
    await db.connect()
    try:
        await notes_resource(db)
        plugin = WebSocketPlugin(port=0, resources={"notes": {"protected": ["profile.ssn"]}})
        await db.use_plugin(plugin)
        async with connect(plugin.url) as client:
            await client.call("subscribe", resource="notes")
            nested: Any = {"city": "Oslo"}
            for _ in range(600):
                nested = {"next": nested}
            profile = {"ssn": "123-45-6789", "next": nested}
            made = await db.resources.notes.insert({"title": "deep", "profile": profile})
            await db.resources.notes.insert({"title": "plain"})
            events = await client.events()
            assert [e["data"]["title"] for e in events] == ["deep", "plain"]
            page = await client.call("list", resource="notes")
            assert [r["title"] for r in page["data"]] == ["deep", "plain"]
            got = await client.call("get", resource="notes", id=made["id"])
            assert got["data"]["title"] == "deep"
            for frame in (events, page, got):
                assert "123-45-6789" not in json.dumps(frame)
            assert (await client.call("ping"))["type"] == "pong"
    finally:
        await db.disconnect()


async def test_a_filter_is_compiled_once_per_frame(monkeypatch):
    import s3db_core.query
    import s3db_core.resource
    import s3db_ws_plugin.handlers

    compiled = []
    real = s3db_core.query.compile_filter

    def counting(filter, limits=None):
        compiled.append(filter)
        return real(filter, limits)

    for module in (s3db_core.resource, s3db_ws_plugin.handlers):
        monkeypatch.setattr(module, "compile_filter", counting)
    filter = {f"k{i}": i for i in range(60)}
    async with serve(notes_resource, resources={"notes": True}) as (_, plugin):
        async with connect(plugin.url) as client:
            for kind in ("list", "subscribe"):
                compiled.clear()
                reply = await client.call(kind, resource="notes", filter=filter)
                assert reply["type"] in ("data", "subscribed")
                assert compiled == [filter], kind


async def test_a_page_of_huge_records_is_read_a_few_at_a_time():
    """40 records of 0.9 MB: one list used to read and decode all 40 (the server grew by
    ~130 MB); now the page ends at the reply budget and only a few records are read."""
    import tracemalloc

    async with serve(scores, resources={"scores": True}) as (db, plugin):
        for i in range(40):
            await db.resources.scores.insert({"player": f"p{i}", "points": i, "blob": "z" * 900_000})
        async with connect(plugin.url) as client:
            tracemalloc.start()
            try:
                tracemalloc.reset_peak()
                before = tracemalloc.get_traced_memory()[0]
                await client.send({"type": "list", "resource": "scores", "limit": 40, "requestId": 1})
                text = await asyncio.wait_for(client.ws.recv(), 10)
                peak = tracemalloc.get_traced_memory()[1] - before
            finally:
                tracemalloc.stop()
            page = json.loads(text)
            assert 1 <= len(page["data"]) <= 2 and page["cursor"]
            # A few records read and ~1.8 MB sent (its copies on both ends of the socket):
            # well under the ~130 MB that reading, decoding and sending all 40 took.
            assert peak < 45_000_000, peak
