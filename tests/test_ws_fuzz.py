"""Random frames (random JSON, wrong types, huge values, garbage) never break the server: every
frame gets one well-formed answer, and afterwards a ping is answered on the same socket and on
a new one. One server serves every example, so state left behind by one example is exercised
by the next."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ws_helpers import JWT_AUTH, connect, notes_resource, serve

TYPES = ["ping", "auth", "subscribe", "unsubscribe", "list", "get", "insert", "update", "delete"]
FIELDS = ["requestId", "resource", "filter", "events", "limit", "cursor", "order", "id", "data", "token"]
ANSWERS = {"pong", "subscribed", "unsubscribed", "data", "inserted", "updated", "deleted", "error"}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["notes", "hidden", "$gt", "$in", "insert", "desc", "", "a.b", "x[]"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.sampled_from(FIELDS), inner, max_size=4),
    max_leaves=12,
)
huge = st.one_of(
    st.integers(1_000, 300_000).map(lambda n: "x" * n),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.sampled_from([10**40, -(2**70), 1e308, -1e-308]),
)


NOTE_FIELDS = ["title", "roomId", "owner", "status", "score", "password", "profile", "items", "id"]
note_keys = st.sampled_from(NOTE_FIELDS) | st.sampled_from(["profile.a", "items[]", "$gt", "x.0"]) | st.text(max_size=6)
operators = st.dictionaries(st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$x"]), json_values, min_size=1, max_size=2)


@st.composite
def frames(draw) -> str | bytes:
    kind = draw(st.integers(0, 7))
    if kind >= 6:  # an operation on a real resource with random data and filters
        frame = {"type": draw(st.sampled_from(TYPES[2:])), "resource": "notes"}
        frame["data"] = draw(st.dictionaries(note_keys, json_values, max_size=5))
        frame["filter"] = draw(st.dictionaries(note_keys, json_values | operators, max_size=3))
        frame["id"] = draw(st.sampled_from(["p1", "n1", ""]) | st.text(max_size=8))
        return json.dumps(frame)
    if kind == 0:  # arbitrary text, sometimes nearly JSON
        return draw(st.text(max_size=60) | st.binary(max_size=60))
    if kind == 1:  # any JSON value
        return json.dumps(draw(json_values))
    if kind == 2:  # a huge value in some field
        value = draw(huge)
        return value if isinstance(value, str) and value.startswith("[") else json.dumps(
            {"type": draw(st.sampled_from(TYPES)), draw(st.sampled_from(FIELDS)): value}
        )
    # a plausible frame whose fields hold random values
    frame = {"type": draw(st.sampled_from(TYPES) | st.text(max_size=10) | json_values)}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True)):
        frame[name] = draw(json_values | st.sampled_from(["notes", "p1"]))
    return json.dumps(frame)


def sent_value(raw: str | bytes):
    """What the test sent, as JSON (None when it is not JSON we can read back)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def ends_session(raw: str | bytes) -> bool:
    """A well-formed auth frame with a bad token rightly closes the socket (4401)."""
    msg = sent_value(raw)
    return isinstance(msg, dict) and msg.get("type") == "auth" and isinstance(msg.get("token"), str) and msg["token"] != ""


class Server:
    """A served database on an event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._cm = serve(notes_resource, resources={"notes": True}, auth={**JWT_AUTH, "required": False})
        self.db, self.plugin = self.run(self._cm.__aenter__())

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self._cm.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


async def exchange(url: str, batch: list[str | bytes]) -> None:
    async with connect(url) as client:
        for raw in batch:
            await client.send(raw)
            while True:
                answer = await client.recv()
                if answer["type"] != "event":
                    break
            assert answer["type"] in ANSWERS, answer
            if answer["type"] == "error":
                assert isinstance(answer["code"], str) and isinstance(answer["message"], str)
                assert answer["code"] != "INTERNAL_ERROR", answer
            sent = sent_value(raw)
            rid = sent.get("requestId") if isinstance(sent, dict) else None
            if isinstance(rid, str) and len(rid) > 128:  # refused, and not echoed back
                assert answer["code"] == "INVALID_MESSAGE", answer
                assert answer["details"]["field"] == "requestId"
            elif isinstance(rid, str):
                assert answer.get("requestId") == rid
            elif isinstance(rid, int | float) and not isinstance(rid, bool):
                # Numbers are echoed as JSON numbers; beyond 64 bits as the double JS would read.
                assert float(answer.get("requestId")) == float(rid)
        assert (await client.call("ping"))["type"] == "pong"
    async with connect(url) as fresh:
        assert (await fresh.call("ping"))["type"] == "pong"


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(batch=st.lists(frames(), min_size=1, max_size=8))
def test_random_frames_never_break_the_server(server, batch):
    batch = [raw for raw in batch if not ends_session(raw)]
    server.run(exchange(server.plugin.url, batch))
