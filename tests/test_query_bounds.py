"""`$or` / `$and`, and the bounds a filter from outside must fit before it is compiled."""

from __future__ import annotations

import time
from typing import Any

import pytest

from s3db_core.errors import ValidationError
from s3db_core.query import (
    FilterLimitError,
    FilterLimits,
    check_limits,
    compile_filter,
    equality_terms,
    matches,
)

ROOMS = [
    {"id": "pub", "isPrivate": False, "members": ["alice"]},
    {"id": "mine", "isPrivate": True, "members": ["bob", "alice"]},
    {"id": "theirs", "isPrivate": True, "members": ["bob"]},
    {"id": "bare"},
]


def ids(filter: dict[str, Any]) -> list[str]:
    predicate = compile_filter(filter)
    return [room["id"] for room in ROOMS if predicate(room)]


def test_or_matches_when_any_branch_does() -> None:
    public_or_member = {"$or": [{"isPrivate": False}, {"members[]": "alice"}]}
    assert ids(public_or_member) == ["pub", "mine"]
    assert ids({"$or": [{"id": "bare"}]}) == ["bare"]


def test_and_matches_when_every_branch_does() -> None:
    assert ids({"$and": [{"isPrivate": True}, {"members[]": "bob"}]}) == ["mine", "theirs"]
    assert ids({"$and": [{"isPrivate": True}, {"members[]": {"$nin": ["alice"]}}]}) == ["theirs"]


def test_logical_operators_nest_and_sit_beside_fields() -> None:
    nested = {
        "isPrivate": True,
        "$or": [{"id": "theirs"}, {"$and": [{"members[]": "alice"}, {"id": {"$ne": "x"}}]}],
    }
    assert ids(nested) == ["mine", "theirs"]
    assert matches({"a": 1, "b": 2}, {"a": 1, "$and": [{"b": 2}], "$or": [{"c": 3}, {"b": 2}]})
    assert not matches({"a": 1, "b": 2}, {"a": 2, "$or": [{"b": 2}]})


def test_logical_branches_are_validated() -> None:
    with pytest.raises(ValidationError) as info:
        compile_filter({"$or": [{"a": {"$regex": "x"}}]})
    assert info.value.errors[0]["field"] == "a"


def test_equality_terms_ignore_logical_operators() -> None:
    # Only top-level equality terms are exact: a branch of $or pins nothing.
    assert equality_terms({"$or": [{"roomId": "r1"}, {"roomId": "r2"}]}) == {}
    assert equality_terms({"$and": [{"roomId": "r1"}]}) == {}
    assert equality_terms({"tenantId": "t1", "$or": [{"a": 1}]}) == {"tenantId": "t1"}


LIMITS = FilterLimits()


@pytest.mark.parametrize(
    ("filter", "limit"),
    [
        ({f"k{i}": i for i in range(65)}, "keys"),
        ({"$or": [{f"k{i}": i} for i in range(65)]}, "keys"),
        ({"a": {"$gt": 1, "$lt": 2}, **{f"k{i}": {"$ne": i} for i in range(63)}}, "operators"),
        ({"a": {"$in": list(range(257))}}, "in"),
        ({"a[]": {"$nin": list(range(257))}}, "in"),
        ({"a": "x" * 20000}, "size"),
        ({"a": {"$in": ["y" * 100] * 200}}, "size"),
        ({"a": [[[[[[[[[[1]]]]]]]]]]}, "depth"),
        ({"$or": [{"$or": [{"$or": [{"$or": [{"$or": [{"a": 1}]}]}]}]}]}, "depth"),
    ],
)
def test_filters_over_a_limit_are_refused_naming_it(filter: dict[str, Any], limit: str) -> None:
    with pytest.raises(FilterLimitError) as info:
        compile_filter(filter, LIMITS)
    assert info.value.limit == limit
    assert info.value.max == getattr(LIMITS, f"max_{limit}")
    assert isinstance(info.value, ValidationError)
    assert info.value.errors[0]["field"] == "filter"


def test_filters_within_the_defaults_compile() -> None:
    fine = {
        "roomId": "r1",
        "score": {"$gte": 1, "$lt": 9},
        "status": {"$in": [f"s{i}" for i in range(256)]},
        "$or": [{"isPrivate": False}, {"members[]": "alice"}],
        "meta.kind": {"nested": {"ok": [1, 2]}},
    }
    record = {"roomId": "r1", "score": 2, "status": "s7", "isPrivate": False}
    record["meta"] = {"kind": {"nested": {"ok": [1, 2]}}}
    assert compile_filter(fine, LIMITS)(record)


def test_limits_are_configurable() -> None:
    small = FilterLimits.from_config({"max_keys": 2})
    check_limits({"a": 1, "b": 2}, small)
    with pytest.raises(FilterLimitError):
        check_limits({"a": 1, "b": 2, "c": 3}, small)
    for bad in ({"max_keys": 0}, {"max_nope": 1}, {"max_in": True}, "x"):
        with pytest.raises(ValueError):
            FilterLimits.from_config(bad)


def test_checking_a_huge_filter_stops_early() -> None:
    # The attack of a 1 MB filter with 33k keys: refused after looking at a few dozen of them.
    huge = {f"field{i:05d}": i for i in range(33_000)}
    big_list = {"a": {"$in": list(range(300_000))}}
    started = time.process_time()
    for filter in (huge, big_list):
        with pytest.raises(FilterLimitError):
            check_limits(filter, LIMITS)
    assert time.process_time() - started < 0.05
