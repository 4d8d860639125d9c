"""The query language: operators, paths, contains, missing fields, mixed types, equality terms."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3db_core.errors import ValidationError
from s3db_core.query import (
    compile_filter,
    equality_terms,
    get_path,
    index_key,
    matches,
)

RECORD = {
    "id": "m1",
    "roomId": "r1",
    "count": 5,
    "ratio": 0.5,
    "flag": True,
    "off": False,
    "none": None,
    "createdAt": "2024-05-01T10:00:00.000Z",
    "players": ["u1", "u2"],
    "scores": [1, 2.5],
    "meta": {"a": {"b": 1}, "list": [{"x": "first"}, {"x": "second"}], "10": "ten"},
}


def check(filter: dict[str, Any] | None, expected: bool, record: Any = RECORD) -> None:
    assert matches(record, filter) is expected
    assert compile_filter(filter)(record) is expected


@pytest.mark.parametrize("filter", [None, {}])
def test_empty_filter_matches_everything(filter: dict[str, Any] | None) -> None:
    check(filter, True)
    check(filter, True, {})
    assert equality_terms(filter) == {}


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ({"roomId": "r1"}, True),
        ({"roomId": "r2"}, False),
        ({"count": 5}, True),
        ({"count": 5.0}, True),
        ({"count": "5"}, False),
        ({"flag": True}, True),
        ({"flag": 1}, False),
        ({"count": True}, False),
        ({"off": 0}, False),
        ({"off": False}, True),
        ({"players": ["u1", "u2"]}, True),
        ({"players": ["u2", "u1"]}, False),
        ({"players": "u1"}, False),
        ({"meta": {"a": {"b": 1}, "list": [{"x": "first"}, {"x": "second"}], "10": "ten"}}, True),
        ({"meta.a": {"b": 1}}, True),
        ({"meta.a": {"b": True}}, False),
        ({"meta.a": {"b": 1, "c": None}}, False),
        ({"meta.a": {}}, False),
        ({"roomId": "r1", "count": 5}, True),
        ({"roomId": "r1", "count": 6}, False),
    ],
)
def test_equality(filter: dict[str, Any], expected: bool) -> None:
    check(filter, expected)


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ({"count": {"$eq": 5}}, True),
        ({"count": {"$eq": True}}, False),
        ({"meta.a": {"$eq": {"b": 1}}}, True),
        ({"count": {"$ne": 5}}, False),
        ({"count": {"$ne": 6}}, True),
        ({"flag": {"$ne": 1}}, True),
        ({"count": {"$gt": 4}}, True),
        ({"count": {"$gt": 5}}, False),
        ({"count": {"$gte": 5}}, True),
        ({"count": {"$lt": 5.5}}, True),
        ({"count": {"$lte": 4.99}}, False),
        ({"count": {"$gt": 1, "$lt": 10}}, True),
        ({"count": {"$gt": 1, "$lt": 3}}, False),
        ({"ratio": {"$lt": 1}}, True),
        ({"createdAt": {"$lt": "2024-06-01T00:00:00.000Z"}}, True),
        ({"createdAt": {"$gte": "2024-05-01T10:00:00.001Z"}}, False),
        ({"createdAt": {"$lt": datetime(2024, 6, 1, tzinfo=UTC)}}, True),
        ({"createdAt": {"$gt": datetime(2024, 6, 1)}}, False),
        ({"count": {"$in": [1, 5]}}, True),
        ({"count": {"$in": [True, "5"]}}, False),
        ({"flag": {"$in": [1, 0]}}, False),
        ({"flag": {"$in": [True]}}, True),
        ({"players": {"$in": [["u1", "u2"], 3]}}, True),
        ({"meta.a": {"$in": [{"b": 1}]}}, True),
        ({"count": {"$in": []}}, False),
        ({"count": {"$nin": [1, 2]}}, True),
        ({"count": {"$nin": [5]}}, False),
        ({"count": {"$nin": []}}, True),
        ({"roomId": {"$exists": True}}, True),
        ({"none": {"$exists": True}}, True),
        ({"nope": {"$exists": True}}, False),
        ({"nope": {"$exists": False}}, True),
        ({"meta.a.b": {"$exists": True}}, True),
    ],
)
def test_operators(filter: dict[str, Any], expected: bool) -> None:
    check(filter, expected)


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ({"nope": None}, True),
        ({"none": None}, True),
        ({"roomId": None}, False),
        ({"nope": {"$eq": None}}, True),
        ({"nope": {"$ne": None}}, False),
        ({"none": {"$ne": None}}, False),
        ({"roomId": {"$ne": None}}, True),
        ({"nope": {"$ne": 1}}, True),
        ({"nope": {"$nin": [1]}}, True),
        ({"nope": {"$nin": [None]}}, False),
        ({"nope": {"$in": [None, 1]}}, True),
        ({"nope": {"$in": [1]}}, False),
        ({"nope": 1}, False),
        ({"nope": {"$gt": 0}}, False),
        ({"nope": {"$lt": "z"}}, False),
        ({"none": {"$lte": 0}}, False),
        ({"nope.deeper": None}, True),
        ({"nope[]": "x"}, False),
        ({"nope[]": {"$ne": "x"}}, True),
        ({"nope[]": {"$nin": ["x"]}}, True),
    ],
)
def test_missing_fields(filter: dict[str, Any], expected: bool) -> None:
    check(filter, expected)


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ({"roomId": {"$gt": 0}}, False),
        ({"count": {"$gt": "0"}}, False),
        ({"flag": {"$gte": 0}}, False),
        ({"flag": {"$lte": 1}}, False),
        ({"players": {"$gt": 0}}, False),
        ({"meta": {"$lt": "z"}}, False),
        ({"none": {"$gt": "a"}}, False),
    ],
)
def test_incomparable_types_are_false(filter: dict[str, Any], expected: bool) -> None:
    check(filter, expected)


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ({"meta.a.b": 1}, True),
        ({"meta.a.b": 2}, False),
        ({"meta.list.0.x": "first"}, True),
        ({"meta.list.1.x": "second"}, True),
        ({"meta.list.2.x": None}, True),
        ({"meta.list.2.x": {"$exists": True}}, False),
        ({"meta.10": "ten"}, True),
        ({"players.0": "u1"}, True),
        ({"roomId.0": "r"}, False),
        ({"count.a": None}, True),
    ],
)
def test_dotted_paths(filter: dict[str, Any], expected: bool) -> None:
    check(filter, expected)


def test_get_path() -> None:
    assert get_path(RECORD, "meta.a.b") == (True, 1)
    assert get_path(RECORD, "none") == (True, None)
    assert get_path(RECORD, "meta.list.1.x") == (True, "second")
    assert get_path(RECORD, "meta.list.٣") == (False, None)
    assert get_path(RECORD, "meta.missing") == (False, None)
    assert get_path(RECORD, "players.-1") == (False, None)
    assert get_path("not a dict", "a") == (False, None)


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ({"players[]": "u1"}, True),
        ({"players[]": "u3"}, False),
        ({"players[]": {"$eq": "u2"}}, True),
        ({"players[]": {"$in": ["u9", "u2"]}}, True),
        ({"players[]": {"$in": ["u9"]}}, False),
        ({"players[]": {"$ne": "u1"}}, False),
        ({"players[]": {"$ne": "u3"}}, True),
        ({"players[]": {"$nin": ["u3", "u1"]}}, False),
        ({"players[]": {"$nin": ["u3"]}}, True),
        ({"scores[]": 2.5}, True),
        ({"scores[]": True}, False),
        ({"roomId[]": "r"}, False),
        ({"meta.list[]": {"x": "first"}}, True),
        ({"meta.list[]": {"$in": [{"x": "second"}]}}, True),
    ],
)
def test_array_contains(filter: dict[str, Any], expected: bool) -> None:
    check(filter, expected)


def test_contains_distinguishes_bools_from_numbers() -> None:
    check({"v[]": 1}, False, {"v": [True]})
    check({"v[]": True}, True, {"v": [1, True]})
    check({"v[]": 0}, True, {"v": [False, 0.0]})


def test_compiled_filter_is_reusable_across_records() -> None:
    predicate = compile_filter({"roomId": "r1", "expiresAt": {"$lt": 100}})
    records = [{"roomId": "r1", "expiresAt": n} for n in (50, 150)] + [
        {"roomId": "r2", "expiresAt": 1}
    ]
    assert [predicate(record) for record in records] == [True, False, False]


@pytest.mark.parametrize(
    ("filter", "field", "rule"),
    [
        ({"a": {"$regex": "x"}}, "a", "operator"),
        ({"a": {"$in": "abc"}}, "a", "operator"),
        ({"a": {"$nin": 5}}, "a", "operator"),
        ({"a": {"$gt": None}}, "a", "operator"),
        ({"a": {"$gt": [1]}}, "a", "operator"),
        ({"a": {"$lt": True}}, "a", "operator"),
        ({"a": {"$exists": 1}}, "a", "operator"),
        ({"a": {"$eq": 1, "b": 2}}, "a", "operator"),
        ({"$or": {"a": 1}}, "$or", "operator"),
        ({"$or": []}, "$or", "operator"),
        ({"$and": [1]}, "$and", "operator"),
        ({"$nor": [{"a": 1}]}, "$nor", "operator"),
        ({"$where": "1"}, "$where", "operator"),
        ({"a[]": {"$gt": 1}}, "a[]", "operator"),
        ({"a[]": {"$exists": True}}, "a[]", "operator"),
        ({"a[]": {"$foo": 1}}, "a[]", "operator"),
        ({"a[]": {"$in": "x"}}, "a[]", "operator"),
        ({"a..b": 1}, "a..b", "path"),
        ({"": 1}, "", "path"),
        ({"[]": 1}, "[]", "path"),
        ({".a": 1}, ".a", "path"),
        ({1: 1}, "1", "path"),
    ],
)
def test_malformed_filters(filter: dict[Any, Any], field: str, rule: str) -> None:
    with pytest.raises(ValidationError) as info:
        compile_filter(filter)
    [error] = info.value.errors
    assert (error["field"], error["rule"]) == (field, rule)
    assert error["message"]


@pytest.mark.parametrize("filter", [["a"], "roomId=r1", 5])
def test_non_dict_filter(filter: Any) -> None:
    with pytest.raises(ValidationError) as info:
        compile_filter(filter)
    assert info.value.errors[0]["field"] == "filter"


def test_equality_terms() -> None:
    filter = {
        "roomId": "r1",
        "meta.kind": {"$eq": "x"},
        "n": 1.5,
        "flag": False,
        "gone": None,
        "at": datetime(2024, 1, 1),
        "both": {"$eq": 3, "$lt": 10},
        "range": {"$gt": 1},
        "players[]": "u1",
        "list": ["a"],
        "obj": {"a": 1},
        "empty": {},
        "deep": {"$eq": {"a": 1}},
        "choice": {"$in": ["a"]},
    }
    assert equality_terms(filter) == {
        "roomId": "r1",
        "meta.kind": "x",
        "n": 1.5,
        "flag": False,
        "gone": None,
        "at": "2024-01-01T00:00:00.000Z",
        "both": 3,
    }


def test_index_key_separates_bools_and_numbers() -> None:
    assert index_key(1) == index_key(1.0)
    assert index_key(True) != index_key(1)
    assert index_key(False) != index_key(0)
    assert index_key("a") == index_key("a") != index_key("b")
    assert index_key([1]) == index_key({"a": 1})
    assert all(index_key([1]) != index_key(v) for v in (None, 0, "", True, False))


# ---- property tests ---------------------------------------------------------------------------

FIELDS = ["a", "b", "c", "a.b", "a.0", "b.c.d"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(-3, 3)
    | st.sampled_from(["", "a", "b", "2024"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "c", "d", "0"]), inner, max_size=3)
    ),
    max_leaves=6,
)
records = st.dictionaries(st.sampled_from(["a", "b", "c", "id"]), values, max_size=4)
operators = st.sampled_from(
    ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$bad"]
)
operands = values | st.lists(values, max_size=3) | st.text(max_size=2)
conditions = values | st.dictionaries(operators, operands, min_size=1, max_size=2)
keys = (
    st.sampled_from(FIELDS) | st.sampled_from(FIELDS).map(lambda f: f + "[]") | st.text(max_size=3)
)
filters = st.dictionaries(keys, conditions, max_size=3)
relaxed = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=300)


@relaxed
@given(records, filters)
def test_random_filters_never_raise_except_validation_error(
    record: dict[str, Any], filter: dict[str, Any]
) -> None:
    try:
        predicate = compile_filter(filter)
    except ValidationError as exc:
        assert exc.errors[0]["field"] in {str(key) for key in filter}
        return
    assert predicate(record) in (True, False)
    assert matches(record, filter) is predicate(record)


@relaxed
@given(records, filters)
def test_equality_terms_are_necessary_conditions(
    record: dict[str, Any], filter: dict[str, Any]
) -> None:
    try:
        predicate = compile_filter(filter)
    except ValidationError:
        return
    terms = equality_terms(filter)
    if predicate(record):
        for key, value in terms.items():
            _, found = get_path(record, key)
            assert index_key(found) == index_key(value)


@relaxed
@given(records, st.sampled_from(FIELDS), scalars)
def test_equality_filter_agrees_with_its_term(
    record: dict[str, Any], field: str, value: Any
) -> None:
    filter = {field: value}
    assert equality_terms(filter) == {field: value}
    _, found = get_path(record, field)
    assert matches(record, filter) is (index_key(found) == index_key(value))


@relaxed
@given(records, st.sampled_from(FIELDS), scalars)
def test_ne_and_nin_are_negations(record: dict[str, Any], field: str, value: Any) -> None:
    eq = matches(record, {field: value})
    assert matches(record, {field: {"$ne": value}}) is not eq
    assert matches(record, {field: {"$in": [value]}}) is eq
    assert matches(record, {field: {"$nin": [value]}}) is not eq
