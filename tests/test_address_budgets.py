"""What one client address, and one user, may hold: subscriptions and filter bytes in total,
across all its sockets (and across server processes sharing a Redis rate limiter), so that one
address cannot pin a large share of the machine within the defaults. And a frame refused before
parsing still answers with its `requestId`.

Frames are sent with the independent `websockets` library: the subject is what the server
answers, byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import AsyncExitStack

import pytest
from broker_helpers import eventually
from ws_helpers import JWT_AUTH, connect, make_token, notes_resource, serve

from s3db_ws_plugin import WebSocketPlugin


# -- a frame refused before parsing ---------------------------------------------------------------
@pytest.mark.parametrize("rid", [1, "list-7", 'a "quoted" \\ id', 2.5, -3])
async def test_a_frame_refused_before_parsing_echoes_its_request_id(rid):
    async with serve(notes_resource, resources={"notes": True}) as (_, plugin):
        async with connect(plugin.url) as client:
            huge = {"type": "list", "resource": "notes", "requestId": rid}
            huge["filter"] = {f"field{i:05d}": i for i in range(33_000)}
            await client.send(huge)
            error = await client.recv()
            assert error["code"] == "INVALID_MESSAGE" and error["details"]["limit"] == "values"
            assert error["requestId"] == rid
            # At the end of the frame too, after the values.
            tail = json.dumps({"filter": huge["filter"], "type": "list", "requestId": rid})
            await client.send(tail)
            error = await client.recv()
            assert error["requestId"] == rid


async def test_a_request_id_that_is_not_one_is_not_echoed():
    async with serve(notes_resource, resources={"notes": True}) as (_, plugin):
        async with connect(plugin.url) as client:
            filter = {f"field{i:05d}": i for i in range(33_000)}
            for rid in ("r" * 129, True, None, {"a": 1}):
                await client.send({"type": "list", "requestId": rid, "filter": filter})
                error = await client.recv()
                assert error["details"]["limit"] == "values" and "requestId" not in error


# -- subscriptions and filter bytes per address and per user ----------------------------------------
def room_filter(i: int, pad: int = 0) -> dict:
    return {"roomId": f"room-{i}", **({"title": "x" * pad} if pad else {})}


async def subscribe(client, i: int, pad: int = 0) -> dict:
    return await client.call("subscribe", resource="notes", filter=room_filter(i, pad))


async def test_one_address_holds_a_bounded_number_of_subscriptions_over_all_its_sockets():
    options = {"max_subscriptions_per_ip": 5, "max_subscriptions": 3}
    async with serve(notes_resource, resources={"notes": True}, **options) as (_, plugin):
        async with AsyncExitStack() as stack:
            sockets = [await stack.enter_async_context(connect(plugin.url)) for _ in range(3)]
            answers = [await subscribe(sockets[i % 3], i) for i in range(5)]
            assert all(a["type"] == "subscribed" for a in answers), answers
            refused = await subscribe(sockets[2], 99)
            assert refused["code"] == "FORBIDDEN", refused
            assert refused["details"] == {"limit": "subscriptions_per_ip", "max": 5}
            assert plugin.holdings.held("ip:127.0.0.1")[0] == 5
            # Subscribing again with the same filter replaces: it holds nothing more.
            assert (await subscribe(sockets[0], 0))["type"] == "subscribed"
            # Unsubscribing frees a place; so does closing a socket.
            await sockets[0].call("unsubscribe", resource="notes", filter=room_filter(0))
            assert (await subscribe(sockets[2], 99))["type"] == "subscribed"
            assert (await subscribe(sockets[2], 100))["code"] == "FORBIDDEN"
            await sockets[1].ws.close()
            await eventually(lambda: plugin.holdings.held("ip:127.0.0.1")[0] == 3, "release")
            assert (await subscribe(sockets[2], 100))["type"] == "subscribed"
        await eventually(lambda: plugin.holdings.held("ip:127.0.0.1") == (0, 0), "all released")


async def test_one_address_holds_a_bounded_number_of_filter_bytes():
    options = {"max_filter_bytes_per_ip": 3000}
    async with serve(notes_resource, resources={"notes": True}, **options) as (_, plugin):
        async with connect(plugin.url) as one, connect(plugin.url) as two:
            assert (await subscribe(one, 1, pad=900))["type"] == "subscribed"
            assert (await subscribe(two, 2, pad=900))["type"] == "subscribed"
            assert (await subscribe(one, 3, pad=900))["type"] == "subscribed"
            refused = await subscribe(two, 4, pad=900)
            assert refused["code"] == "FORBIDDEN", refused
            assert refused["details"] == {"limit": "filter_bytes_per_ip", "max": 3000}
            # A small filter still fits.
            assert (await subscribe(two, 5))["type"] == "subscribed"


async def test_the_defaults_keep_one_address_to_a_few_megabytes_of_filters():
    """The leaderboard attack: sockets of 100 subscriptions with ~16 KB filters each. With the
    defaults one address stops at 4 MiB of filters (about 256 such subscriptions), not 6.5 GB."""
    async with serve(notes_resource, resources={"notes": True}) as (_, plugin):
        async with AsyncExitStack() as stack:
            held = 0
            refused = None
            for s in range(4):
                client = await stack.enter_async_context(connect(plugin.url))
                for i in range(100):
                    answer = await subscribe(client, s * 100 + i, pad=16_000)
                    if answer["type"] != "subscribed":
                        refused = answer
                        break
                    held += 1
                if refused:
                    break
            assert refused is not None and refused["details"]["limit"] == "filter_bytes_per_ip"
            assert 200 < held <= (4 << 20) // 16_000
            subs, size = plugin.holdings.held("ip:127.0.0.1")
            assert subs == held and size <= 4 << 20


async def test_one_user_holds_a_bounded_number_of_subscriptions_over_all_its_sockets():
    options = {"max_subscriptions_per_user": 3, "auth": JWT_AUTH}
    async with serve(notes_resource, resources={"notes": True}, **options) as (_, plugin):
        async with (
            connect(plugin.url, token=make_token("ann")) as ann1,
            connect(plugin.url, token=make_token("ann")) as ann2,
            connect(plugin.url, token=make_token("bob")) as bob,
        ):
            for i, client in enumerate([ann1, ann2, ann1]):
                assert (await subscribe(client, i))["type"] == "subscribed"
            refused = await subscribe(ann2, 9)
            assert refused["details"] == {"limit": "subscriptions_per_user", "max": 3}
            assert (await subscribe(bob, 9))["type"] == "subscribed"  # another user


async def test_budgets_are_options_with_none_for_no_cap():
    with pytest.raises(ValueError, match="max_subscriptions_per_ip"):
        WebSocketPlugin(max_subscriptions_per_ip=0)
    with pytest.raises(ValueError, match="max_filter_bytes_per_user"):
        WebSocketPlugin(max_filter_bytes_per_user="1MB")
    plugin = WebSocketPlugin(max_subscriptions_per_ip=None, max_filter_bytes_per_ip=None)
    assert plugin.holdings.budgets["ip"].subscriptions is None


# -- across processes sharing the Redis rate limiter ----------------------------------------------
async def test_a_users_budget_holds_across_servers_sharing_the_redis_limiter(redis_url):
    prefix = f"hold-{uuid.uuid4().hex[:10]}"
    options = {
        "auth": JWT_AUTH,
        "max_subscriptions_per_user": 4,
        "rate_limit": {"limiter": "redis", "url": redis_url, "prefix": prefix},
    }
    token = make_token("ann")
    async with (
        serve(notes_resource, resources={"notes": True}, **options) as (_, one),
        serve(notes_resource, resources={"notes": True}, **options) as (_, two),
    ):
        async with connect(one.url, token=token) as a, connect(two.url, token=token) as b:
            for i, client in enumerate([a, b, a, b]):
                assert (await subscribe(client, i))["type"] == "subscribed"
            for client in (a, b):
                refused = await subscribe(client, 9)
                assert refused["code"] == "FORBIDDEN", refused
                assert refused["details"] == {"limit": "subscriptions_per_user", "max": 4}
            # Each server alone holds only two: the refusal came from the shared count.
            assert one.holdings.held("user:ann")[0] == two.holdings.held("user:ann")[0] == 2
            await a.call("unsubscribe", resource="notes", filter=room_filter(0))
            deadline = asyncio.get_running_loop().time() + 5
            while (answer := await subscribe(b, 9))["type"] != "subscribed":
                assert asyncio.get_running_loop().time() < deadline, answer
                await asyncio.sleep(0.05)
            assert (await subscribe(a, 10))["code"] == "FORBIDDEN"


async def test_a_subscribe_in_flight_when_its_socket_closes_holds_nothing_afterwards():
    """A socket closed while its subscribe waits on a slow guard: the subscription the guard
    then allows must not outlive the socket, nor keep counting against the address."""
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(user, filter):
        entered.set()
        await release.wait()
        return True

    resources = {"notes": {"guard": {"subscribe": slow}}}
    async with serve(notes_resource, resources=resources) as (_, plugin):
        async with connect(plugin.url) as client:
            await client.send({"type": "subscribe", "resource": "notes", "requestId": 1})
            await asyncio.wait_for(entered.wait(), 5)
            [conn] = plugin.connections
        await eventually(lambda: not plugin.connections, "the socket closed on the server")
        release.set()
        await eventually(lambda: conn.requests_in_flight == 0, "the subscribe to end")
        await eventually(lambda: not conn.subscriptions, "its subscriptions forgotten")
        assert len(plugin.registry) == 0 and plugin.holdings.held("ip:127.0.0.1") == (0, 0)
