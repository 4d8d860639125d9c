"""Records round-trip exactly through metadata/body encoding on every backend."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3db_core import Database, ValidationError
from s3db_core.encoding import (
    METADATA_LIMIT,
    decode_key,
    decode_record,
    encode_key,
    encode_record,
    metadata_size,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(st.text(max_size=30))
def test_field_names_round_trip(name):
    key = encode_key(name)
    assert key == key.lower() and key.isascii()
    assert decode_key(key) == name


@given(st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_any_json_record_round_trips_and_respects_the_budget(fields):
    metadata, body = encode_record(fields)
    assert metadata_size(metadata) <= METADATA_LIMIT
    assert all(v.isascii() and v == v.strip() and "  " not in v for v in metadata.values())
    assert decode_record({k.lower(): v for k, v in metadata.items()}, body) == fields


def test_every_version_has_a_distinct_body_so_s3_etags_differ():
    # S3 ETags hash the body only: equal bodies would let a stale If-Match win.
    assert encode_record({"a": 1})[1] != encode_record({"a": 1})[1]


def test_behaviors():
    big = {"a": "x" * 1500, "b": "y" * 1500, "c": 1}
    meta, body = encode_record(big)
    assert "fa" in meta and "fb" not in meta and meta["sb"] == "1"
    assert decode_record(meta, body) == big
    meta, body = encode_record(big, "body-only")
    assert decode_record(meta, body) == big and not any(k.startswith("f") for k in meta)
    with pytest.raises(ValidationError) as err:
        encode_record(big, "enforce-limits")
    assert err.value.errors[0]["field"] == "b"
    meta, body = encode_record(big, "truncate-data")
    out = decode_record(meta, body)
    assert out["a"] == big["a"] and big["b"].startswith(out["b"]) and len(out["b"]) < 1500
    assert metadata_size(meta) <= METADATA_LIMIT and "sb" not in meta


@pytest.fixture
def runner():
    with asyncio.Runner() as r:
        yield r


@pytest.fixture
def resource(storage_url, runner):
    db = Database(storage_url)
    runner.run(db.connect())
    res = runner.run(db.create_resource("docs", {"title": "string|optional", "payload": "json|optional"}))
    yield res
    runner.run(db.disconnect())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(title=st.text(max_size=300), payload=json_values)
def test_records_round_trip_through_the_store(resource, runner, title, payload):
    rec = runner.run(resource.insert({"title": title, "payload": payload}))
    assert runner.run(resource.get(rec["id"])) == {"id": rec["id"], "title": title, "payload": payload}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(1800, 2300), char=st.sampled_from(["a", "é", "漢", "😀", " "]))
def test_records_near_and_over_the_limit_round_trip(resource, runner, size, char):
    title = char * (size // len(char.encode()))
    rec = runner.run(resource.insert({"title": title, "payload": {"k": title[:10]}}))
    assert runner.run(resource.get(rec["id"]))["title"] == title
