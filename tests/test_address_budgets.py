"""What one client address, and one user, may hold: subscriptions and filter bytes in total,
across all its sockets (and across server processes sharing a Redis rate limiter), so that one
address cannot pin a large share of the machine within the defaults. And a frame refused before
parsing still answers with its `requestId`.

Frames are sent with the independent `websockets` library: the subject is what the server
answers, byte for byte.
"""

from __future__ import annotations

import json

import pytest
from ws_helpers import connect, notes_resource, serve


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
