"""A socket's session against clients that never finish what they start, over real sockets:
the first-credentials deadline is absolute (WebSocket pings do not extend it), a half-sent
HTTP upgrade is cut off at the header deadline (slowloris), and connections per IP (all, and
still unauthenticated) are capped.

Deadlines are configured short; every wait is bounded by a margin several times the deadline.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from ws_helpers import JWT_AUTH, connect, make_token, notes_resource, serve

from s3db_ws_plugin import connection

MARGIN = 5.0  # seconds: how late a deadline may fire on a loaded CI machine


async def closed_within(ws: websockets.ClientConnection, seconds: float) -> int | None:
    """Read (ignoring frames) until the server closes; the close code."""
    async with asyncio.timeout(seconds):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None


async def test_websocket_pings_do_not_extend_the_auth_deadline():
    async with serve(resources={}, auth=JWT_AUTH, auth_timeout=0.5) as (_, plugin):
        # ping_interval: the websockets library pings every 0.1 s, as a keep-alive would.
        async with websockets.connect(plugin.url, ping_interval=0.1, ping_timeout=MARGIN) as ws:
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await closed_within(ws, MARGIN) == 4401
            assert loop.time() - started < 0.5 + MARGIN / 2


async def test_ping_frames_do_not_extend_the_auth_deadline():
    async with serve(resources={}, auth=JWT_AUTH, auth_timeout=0.5) as (_, plugin):
        async with connect(plugin.url, connected=False) as client:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + MARGIN
            code = None
            while code is None and loop.time() < deadline:
                try:
                    await client.send({"type": "ping"})
                    await asyncio.wait_for(client.ws.recv(), 0.1)
                except TimeoutError:
                    continue
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd else None
            assert code == 4401


async def test_a_half_sent_upgrade_request_is_cut_off_at_the_header_deadline():
    async with serve(resources={}, header_timeout=0.5) as (_, plugin):
        reader, writer = await asyncio.open_connection("127.0.0.1", plugin.port)
        try:
            # Slowloris: the request line and a header, then one more header line now and then.
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            await writer.drain()

            async def trickle() -> None:
                for n in range(100):
                    await asyncio.sleep(0.1)
                    writer.write(b"X-Slow-%d: 1\r\n" % n)
                    await writer.drain()

            dripping = asyncio.create_task(trickle())
            try:
                async with asyncio.timeout(0.5 + MARGIN):
                    try:
                        left = await reader.read()
                    except ConnectionResetError:  # closed while a header line was on its way
                        left = b""
                    assert left == b""  # the server closed the connection, answering nothing
            finally:
                dripping.cancel()
                await asyncio.gather(dripping, return_exceptions=True)
        finally:
            writer.close()


async def test_a_complete_upgrade_is_not_cut_by_the_header_deadline():
    async with serve(resources={}, header_timeout=0.3) as (_, plugin):
        async with connect(plugin.url) as client:
            await asyncio.sleep(0.6)  # longer than the header deadline: the session goes on
            assert (await client.call("ping"))["type"] == "pong"


async def refused_upgrade(url: str) -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(url, open_timeout=MARGIN):
            pass
    return refused.value.response.status_code


async def test_connections_per_ip_are_capped():
    async with serve(resources={}, max_connections_per_ip=3) as (_, plugin):
        async with connect(plugin.url) as a, connect(plugin.url), connect(plugin.url):
            assert await refused_upgrade(plugin.url) == 429
            assert (await a.call("ping"))["type"] == "pong"  # the others are unaffected
        # Closing them frees the slots.
        async with connect(plugin.url) as again:
            assert (await again.call("ping"))["type"] == "pong"


async def test_unauthenticated_connections_per_ip_are_capped():
    async with serve(
        resources={}, auth=JWT_AUTH, auth_timeout=MARGIN * 2, max_unauthenticated_per_ip=2
    ) as (_, plugin):
        async with connect(plugin.url, connected=False), connect(plugin.url, connected=False):
            assert await refused_upgrade(plugin.url) == 429
            # A client with credentials in the upgrade request is not held back.
            async with connect(plugin.url, token=make_token("ann")) as ann:
                assert (await ann.call("ping"))["type"] == "pong"
        # Signing in frees the slot: two sockets that authenticate by frame, then a third.
        async with connect(plugin.url, connected=False) as a, connect(plugin.url, connected=False) as b:
            for client in (a, b):
                assert (await client.recv())["type"] == "auth_required"
                await client.send({"type": "auth", "token": make_token("bob")})
                assert (await client.recv())["type"] == "authenticated"
            async with connect(plugin.url, connected=False) as c:
                assert (await c.call("ping"))["type"] == "pong"


async def test_a_refused_upgrade_is_not_counted_as_a_connection():
    async with serve(resources={}, max_connections_per_ip=1) as (_, plugin):
        async with connect(plugin.url):
            assert await refused_upgrade(plugin.url) == 429
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{plugin.http_url}/health") as resp:
                    assert json.loads(await resp.text())["connections"] == 1


@pytest.mark.parametrize(
    "options",
    [
        {"header_timeout": 0},
        {"header_timeout": "10"},
        {"max_connections_per_ip": 0},
        {"max_unauthenticated_per_ip": -1},
        {"max_connections_per_ip": 1.5},
    ],
)
def test_bad_session_options_are_refused(options):
    from s3db_ws_plugin import WebSocketPlugin

    with pytest.raises(ValueError):
        WebSocketPlugin(**options)


# -- requests on one socket run concurrently ----------------------------------------------------
async def stuck_notes(release: asyncio.Event):
    """A notes resource whose create guard waits for ``release`` (a write stuck on the store)."""

    async def create(user, data):
        if data.get("title") == "stuck":
            await release.wait()
        return True

    return {"notes": {"guard": {"create": create}}}


async def test_a_ping_and_a_read_answer_while_a_write_is_stuck():
    release = asyncio.Event()
    async with serve(notes_resource, resources=await stuck_notes(release)) as (db, plugin):
        existing = await db.resources.notes.insert({"title": "there"})
        async with connect(plugin.url) as client:
            await client.send({"type": "insert", "requestId": "w", "resource": "notes", "data": {"title": "stuck"}})
            assert (await client.call("ping", timeout=MARGIN))["type"] == "pong"
            got = await client.call("get", resource="notes", id=existing["id"], timeout=MARGIN)
            assert got["data"]["title"] == "there"
            release.set()
            inserted = await client.recv(MARGIN)
            assert (inserted["type"], inserted["requestId"]) == ("inserted", "w")


async def test_a_list_after_a_subscribe_waits_for_the_subscription():
    # The seed's ChatRoom sends subscribe then list without waiting: the subscription must be in
    # place before the history is read, or a message could fall between the two.
    gate = asyncio.Event()

    async def slow_subscribe(user, filter):
        await gate.wait()
        return True

    resources = {"notes": {"guard": {"subscribe": slow_subscribe}}}
    async with serve(notes_resource, resources=resources) as (db, plugin):
        async with connect(plugin.url) as client:
            await client.send({"type": "subscribe", "requestId": "s", "resource": "notes"})
            await client.send({"type": "list", "requestId": "l", "resource": "notes"})
            assert (await client.call("ping", timeout=MARGIN))["type"] == "pong"  # not held back
            gate.set()
            replies = [await client.recv(MARGIN), await client.recv(MARGIN)]
            assert [r["requestId"] for r in replies] == ["s", "l"]


async def test_concurrent_requests_per_connection_are_bounded():
    release = asyncio.Event()
    resources = await stuck_notes(release)
    async with serve(notes_resource, resources=resources, max_concurrent_requests=2) as (db, plugin):
        async with connect(plugin.url) as client:
            for n in range(3):
                await client.send({"type": "insert", "requestId": n, "resource": "notes", "data": {"title": "stuck"}})
            # Two run; the third waits for a slot (the socket is not read meanwhile).
            await client.send({"type": "ping", "requestId": "p"})
            with pytest.raises(TimeoutError):
                await client.recv(0.3)
            release.set()
            replies = [await client.recv(MARGIN) for _ in range(4)]
            assert sorted(str(r["requestId"]) for r in replies) == ["0", "1", "2", "p"]
        assert await db.resources.notes.count() == 3


# -- slow consumers ---------------------------------------------------------------------------
async def test_a_slow_reader_that_resumes_gets_4408_not_a_bare_disconnect(monkeypatch):
    # The closing handshake timeout is short here; the reader resumes well after it.
    monkeypatch.setattr(connection, "CLOSE_TIMEOUT", 0.2)
    async with serve(notes_resource, resources={"notes": True}, max_queue_bytes=64 * 1024) as (db, plugin):
        # max_queue=1: the client library stops reading the socket once one frame is unread.
        async with websockets.connect(plugin.url, max_queue=1, max_size=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "requestId": "s", "resource": "notes"}))
            assert [json.loads(await ws.recv())["type"] for _ in range(2)] == ["connected", "subscribed"]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + MARGIN * 2
            big = "x" * 30_000
            while not any(c.overflowed for c in plugin.connections) and plugin.connections:
                assert loop.time() < deadline, "the server never declared the reader slow"
                await db.resources.notes.insert({"title": "t", "items": big})
                await asyncio.sleep(0)  # let the server's sockets work
            await asyncio.sleep(1.0)  # well past the close timeout: the reader resumes only now
            frames = 0
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(MARGIN * 2):
                    while True:
                        await ws.recv()
                        frames += 1
            assert frames > 0
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408
    assert 'code="4408"' in plugin.metrics.render().decode()


async def test_the_connection_forgets_what_it_held_even_what_a_request_added_after_it_closed():
    """The connection owns its state: the owners (open connections, the registry and the
    holdings, the resumer, the channels) register clean-ups, and closing runs them, again after
    the requests in flight: a subscribe whose guard answers after the socket closed leaves no
    subscription, hold or budget behind; a clean-up that raises does not stop the others."""
    from s3db_core import hookimpl

    gate, entered = asyncio.Event(), asyncio.Event()

    async def slow_subscribe(user, filter):
        entered.set()
        await gate.wait()
        return True

    class Breaks:
        @hookimpl
        def s3db_ws_connected(self, connection):
            connection.on_close(self.fail)

        @staticmethod
        def fail(connection):
            raise RuntimeError("a broken clean-up")

    resources = {"notes": {"guard": {"subscribe": slow_subscribe}}}
    async with serve(notes_resource, resources=resources, channels={"room:*": {"anonymous": True}}) as (db, plugin):
        db.pm.register(Breaks())
        async with connect(plugin.url) as client:
            joined = await client.call("join", channel="room:1", timeout=MARGIN)
            assert joined["type"] == "channel:joined", joined
            await client.send({"type": "subscribe", "requestId": "s", "resource": "notes", "since": None})
            await asyncio.wait_for(entered.wait(), MARGIN)
        async with asyncio.timeout(MARGIN):
            while plugin.connections:  # the socket's close reached the server
                await asyncio.sleep(0.02)
        gate.set()  # the subscribe completes after the socket is gone
        async with asyncio.timeout(MARGIN):
            while plugin.sessions.tasks:  # the session ended: requests done, clean-ups run
                await asyncio.sleep(0.02)
        assert len(plugin.registry) == 0
        assert not plugin.resumer.holds and not plugin.resumer.guards
        assert plugin.holdings.held("ip:127.0.0.1") == (0, 0)
        assert not plugin.channels.of_connection
