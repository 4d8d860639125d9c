"""Schema DSL: every type and rule, defaults, all failing fields reported, schema errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3db_core.errors import ValidationError
from s3db_core.schema import Schema, to_iso


def failures(schema: Schema, data: Any) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        schema.validate(data)
    errors = info.value.errors
    assert all(error["message"] for error in errors)
    return [(error["field"], error["rule"]) for error in errors]


CHAT_MESSAGES = {
    "roomId": "string|required",
    "userId": "string|required",
    "username": "string|required",
    "content": "string|required|maxlength:4000",
    "type": "string|default:text",
    "replyTo": "string|optional",
    "metadata": "json|optional",
}


def test_seed_chat_message_gets_defaults() -> None:
    schema = Schema(CHAT_MESSAGES, timestamps=True)
    data = {"roomId": "r1", "userId": "u1", "username": "ann", "content": "hi"}
    out = schema.validate(data)
    assert out == {**data, "type": "text"}
    assert out is not data and "type" not in data


def test_seed_chat_room_defaults_are_fresh_copies() -> None:
    schema = Schema(
        {
            "name": "string|required",
            "isPrivate": "boolean|default:false",
            "members": "array|items:string|default:[]",
            "settings": 'json|default:{"a":[1]}',
        }
    )
    first = schema.validate({"name": "a"})
    assert first == {"name": "a", "isPrivate": False, "members": [], "settings": {"a": [1]}}
    first["members"].append("x")
    first["settings"]["a"].append(2)
    second = schema.validate({"name": "b"})
    assert second["members"] == [] and second["settings"] == {"a": [1]}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("number|default:0", 0),
        ("number|default:1.5", 1.5),
        ("boolean|default:true", True),
        ("string|default:text", "text"),
        ("string|default:123", "123"),
        ("string|default:true", "true"),
        ('string|default:""', ""),
        ("string|default:", ""),
        ("string|default:a:b", "a:b"),
        ("json|default:null", None),
        ("json|default:plain words", "plain words"),
        ('array|default:[1,"a"]', [1, "a"]),
        ("datetime|default:2024-01-02T03:04:05+01:00", "2024-01-02T02:04:05.000Z"),
    ],
)
def test_default_parsing(spec: str, expected: Any) -> None:
    assert Schema({"f": spec}).validate({}) == {"f": expected}


def test_explicit_value_beats_default_and_none_is_kept() -> None:
    schema = Schema({"type": "string|default:text", "note": "string"})
    assert schema.validate({"type": "image"}) == {"type": "image"}
    assert schema.validate({"type": None, "note": None}) == {"type": None, "note": None}


def test_required_missing_or_null() -> None:
    schema = Schema({"a": "string|required", "b": "number|required"})
    assert failures(schema, {"b": None}) == [("a", "required"), ("b", "required")]


@pytest.mark.parametrize(
    ("spec", "good", "bad"),
    [
        ("string", ["", "x", "é✓"], [1, 1.5, True, ["x"], {"a": 1}]),
        ("secret", ["hunter2"], [1, b"bytes"]),
        ("number", [0, -1, 1.5, 10**30], [True, False, "1", float("nan"), float("inf"), [1]]),
        ("boolean", [True, False], [0, 1, "true"]),
        ("array", [[], [1, "a", None, {"x": [True]}]], ["abc", {"a": 1}, 3, [{1: 2}], [set()]]),
        (
            "json",
            [None, 1, "s", True, [1, {"a": [None]}], {"a": {"b": 1.5}}],
            [{1: "x"}, {"a": float("nan")}, {"s": {1, 2}}, (1, 2), object()],
        ),
        ("email", ["a@b.co", "first.last+tag@mail.example.org"], [3, True]),
        (
            "datetime",
            ["2024-01-01T00:00:00Z", "2024-06-30", datetime(2024, 1, 1)],
            [1700000000, True],
        ),
    ],
)
def test_types(spec: str, good: list[Any], bad: list[Any]) -> None:
    schema = Schema({"f": spec})
    for value in good:
        assert "f" in schema.validate({"f": value})
    for value in bad:
        assert failures(schema, {"f": value}) == [("f", "type")], value


def test_number_keeps_ints_and_floats() -> None:
    out = Schema({"a": "number", "b": "number"}).validate({"a": 3, "b": 3.25})
    assert out == {"a": 3, "b": 3.25} and type(out["a"]) is int


@pytest.mark.parametrize(
    "value", ["no-at", "a@b", "a @b.com", "a@b.", "@b.com", "a@@b.com", "x" * 250 + "@b.com"]
)
def test_email_format(value: str) -> None:
    assert failures(Schema({"e": "email"}), {"e": value}) == [("e", "format")]


def test_datetime_normalized_to_utc_milliseconds() -> None:
    schema = Schema({"at": "datetime"})
    eastern = timezone(timedelta(hours=-5))
    cases = {
        "2024-01-01T00:00:00Z": "2024-01-01T00:00:00.000Z",
        "2024-01-01T05:30:00.123456+02:00": "2024-01-01T03:30:00.123Z",
        "2024-01-01": "2024-01-01T00:00:00.000Z",
        datetime(2024, 3, 1, 12, 0, tzinfo=UTC): "2024-03-01T12:00:00.000Z",
        datetime(2024, 3, 1, 12, 0, tzinfo=eastern): "2024-03-01T17:00:00.000Z",
        datetime(2024, 3, 1, 12, 0, 0, 999_999): "2024-03-01T12:00:00.999Z",
    }
    for given_value, stored in cases.items():
        assert schema.validate({"at": given_value}) == {"at": stored}
    assert failures(schema, {"at": "yesterday"}) == [("at", "format")]
    assert failures(schema, {"at": "2024-13-01"}) == [("at", "format")]


def test_to_iso_is_fixed_width_and_sortable() -> None:
    early, late = datetime(5, 1, 1), datetime(2024, 1, 1, tzinfo=UTC)
    assert to_iso(early) == "0005-01-01T00:00:00.000Z"
    assert to_iso(early) < to_iso(late)


def test_number_min_max_integer_enum() -> None:
    schema = Schema({"n": "number|min:1|max:10|integer", "p": "number|enum:1,2.5,3"})
    assert schema.validate({"n": 1, "p": 2.5}) == {"n": 1, "p": 2.5}
    assert schema.validate({"n": 10.0, "p": 3}) == {"n": 10.0, "p": 3}
    assert failures(schema, {"n": 0, "p": 4}) == [("n", "min"), ("p", "enum")]
    assert failures(schema, {"n": 11}) == [("n", "max")]
    assert failures(schema, {"n": 2.5}) == [("n", "integer")]
    assert failures(schema, {"n": 0.5}) == [("n", "min"), ("n", "integer")]


def test_string_and_array_lengths() -> None:
    schema = Schema(
        {
            "s": "string|minlength:2|maxlength:3",
            "t": "string|min:1|max:2",
            "a": "array|items:number|minlength:1|maxlength:2",
            "b": "array|min:1|max:1",
        }
    )
    assert schema.validate({"s": "ab", "t": "é", "a": [1, 2], "b": ["x"]})
    assert failures(schema, {"s": "a", "t": "", "a": [], "b": []}) == [
        ("s", "minlength"),
        ("t", "min"),
        ("a", "minlength"),
        ("b", "min"),
    ]
    assert failures(schema, {"s": "abcd", "t": "abc", "a": [1, 2, 3], "b": [1, 2]}) == [
        ("s", "maxlength"),
        ("t", "max"),
        ("a", "maxlength"),
        ("b", "max"),
    ]


def test_seed_maxlength_4000() -> None:
    schema = Schema(CHAT_MESSAGES)
    base = {"roomId": "r", "userId": "u", "username": "n"}
    assert schema.validate({**base, "content": "x" * 4000})
    assert failures(schema, {**base, "content": "x" * 4001}) == [("content", "maxlength")]


def test_string_enum() -> None:
    schema = Schema({"severity": "string|required|enum:critical, warning,info"})
    assert schema.validate({"severity": "warning"}) == {"severity": "warning"}
    assert failures(schema, {"severity": "debug"}) == [("severity", "enum")]


def test_array_items_report_each_bad_element() -> None:
    schema = Schema({"tags": "array|items:string", "at": "array|items:datetime"})
    out = schema.validate({"tags": ("a", "b"), "at": [datetime(2024, 1, 1)]})
    assert out == {"tags": ["a", "b"], "at": ["2024-01-01T00:00:00.000Z"]}
    assert failures(schema, {"tags": ["a", 1, "c", None], "at": ["x"]}) == [
        ("tags.1", "type"),
        ("tags.3", "type"),
        ("at.0", "format"),
    ]


def test_every_failing_field_reported_at_once() -> None:
    schema = Schema(
        {
            "name": "string|required",
            "age": "number|integer",
            "email": "email",
            "tags": "array|items:string",
            "profile": {"bio": "string|maxlength:3", "links": {"site": "string|required"}},
        }
    )
    data = {
        "age": "old",
        "email": "nope",
        "tags": [1],
        "profile": {"bio": "long", "links": {"x": 1}, "extra": True},
        "hack": 1,
    }
    assert failures(schema, data) == [
        ("name", "required"),
        ("age", "type"),
        ("email", "format"),
        ("tags.0", "type"),
        ("profile.bio", "maxlength"),
        ("profile.links.site", "required"),
        ("profile.links.x", "unknown"),
        ("profile.extra", "unknown"),
        ("hack", "unknown"),
    ]


def test_nested_object_defaults_and_optional_by_default() -> None:
    schema = Schema({"profile": {"theme": "string|default:dark", "age": "number"}})
    assert schema.validate({}) == {}
    assert schema.validate({"profile": {}}) == {"profile": {"theme": "dark"}}
    assert schema.validate({"profile": None}) == {"profile": None}
    assert failures(schema, {"profile": "x"}) == [("profile", "type")]
    assert failures(schema, {"profile": {"age": "1"}}) == [("profile.age", "type")]


def test_nested_object_required_with_type_header() -> None:
    schema = Schema({"address": {"$$type": "object|required", "city": "string"}})
    assert failures(schema, {}) == [("address", "required")]
    assert schema.validate({"address": {"city": "Rome"}}) == {"address": {"city": "Rome"}}
    assert failures(schema, {"address": {"$$type": "x"}}) == [("address.$$type", "unknown")]


def test_unknown_fields_rejected_and_system_fields_pass_through() -> None:
    schema = Schema({"a": "string"}, timestamps=True)
    record = {"id": "x/invalid?", "createdAt": 5, "updatedAt": None, "a": "v"}
    assert schema.validate(record) == record
    assert failures(schema, {"a": "v", "b": 1, 2: 3}) == [("b", "unknown"), ("2", "unknown")]
    plain = Schema({"a": "string"})
    assert failures(plain, {"createdAt": "t"}) == [("createdAt", "unknown")]
    assert plain.validate({"id": "k"}) == {"id": "k"}
    assert Schema({"createdAt": "datetime"}).validate({"createdAt": "2024-01-01"})


def test_validate_rejects_non_dict() -> None:
    assert failures(Schema({}), ["a"]) == [("", "type")]


def test_fields_and_to_dict() -> None:
    attributes = {
        "a": "string|required|maxlength:4",
        "o": {"$$type": "object|optional", "n": "number|min:0"},
    }
    schema = Schema(attributes)
    assert schema.to_dict() == attributes
    assert orjson.loads(orjson.dumps(schema.to_dict())) == attributes
    schema.to_dict()["a"] = "number"
    assert schema.to_dict() == attributes
    a = schema.fields["a"]
    assert (a.path, a.type, a.required, a.rules, a.has_default) == (
        "a",
        "string",
        True,
        {"maxlength": 4},
        False,
    )
    nested = schema.fields["o"].props
    assert nested is not None and nested["n"].path == "o.n" and nested["n"].rules == {"min": 0}
    assert Schema(schema.to_dict()).validate({"a": "x"}) == {"a": "x"}


@pytest.mark.parametrize(
    ("attributes", "words"),
    [
        ({"f": "strin"}, ["'f'", "type", "strin"]),
        ({"f": "string|requird"}, ["'f'", "rule", "requird"]),
        ({"f": "boolean|maxlength:3"}, ["'f'", "maxlength", "boolean"]),
        ({"f": "string|integer"}, ["integer", "string"]),
        ({"f": "number|items:string"}, ["items"]),
        ({"f": "array|items:object"}, ["items:object"]),
        ({"f": "array|items:array"}, ["items:array"]),
        ({"f": "string|max"}, ["max", "value"]),
        ({"f": "string|required:yes"}, ["required", "no value"]),
        ({"f": "number|min:abc"}, ["min", "number"]),
        ({"f": "string|maxlength:-1"}, ["maxlength"]),
        ({"f": "string|maxlength:2.5"}, ["maxlength"]),
        ({"f": "number|enum:1,a"}, ["enum"]),
        ({"f": "string|enum:a,,b"}, ["enum"]),
        ({"f": "number|default:abc"}, ["'f'", "default"]),
        ({"f": "boolean|default:1"}, ["'f'", "default"]),
        ({"f": "string|maxlength:2|default:abc"}, ["default"]),
        ({"f": "array|items:string|default:[1]"}, ["default"]),
        ({"f": "object"}, ["nested dict"]),
        ({"f": 5}, ["'f'"]),
        ({"o": {"inner": "nope"}}, ["'o.inner'", "nope"]),
        ({"o": {"$$type": "object|maxlength:3"}}, ["$$type"]),
        ({"o": {"$$type": "string"}}, ["$$type"]),
        ({"a.b": "string"}, ["'a.b'"]),
        ({"$where": "string"}, ["$where"]),
        ({"tags[]": "string"}, ["tags[]"]),
        ({"": "string"}, ["non-empty"]),
        ({"id": "string"}, ["'id'", "managed"]),
    ],
)
def test_schema_errors_name_field_and_rule(attributes: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        Schema(attributes)
    assert not isinstance(info.value, ValidationError)
    for word in words:
        assert word in str(info.value)


def test_timestamp_names_reserved_only_with_timestamps() -> None:
    with pytest.raises(ValueError, match="createdAt"):
        Schema({"createdAt": "datetime"}, timestamps=True)


SCHEMA = Schema(
    {
        "s": "string|maxlength:5",
        "n": "number|min:0|integer",
        "b": "boolean|default:false",
        "a": "array|items:string|default:[]",
        "j": "json",
        "o": {"x": "number|required"},
    }
)
def json_strategy(floats: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | floats | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        ),
        max_leaves=8,
    )


json_values = json_strategy(st.floats())  # NaN and infinities included: not JSON
valid_json_values = json_strategy(st.floats(allow_nan=False, allow_infinity=False))


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(["s", "n", "b", "a", "j", "o", "zz", "id"]), json_values))
def test_random_data_raises_only_validation_error(data: dict[str, Any]) -> None:
    try:
        out = SCHEMA.validate(data)
    except ValidationError as exc:
        assert exc.errors and all(
            set(error) == {"field", "rule", "message"} for error in exc.errors
        )
    else:
        assert (
            "zz" not in out
            and out["b"] in (False, True, None)
            and isinstance(out["a"], list | None)
        )
        assert SCHEMA.validate(out) == out


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "s": st.text(max_size=5),
            "n": st.integers(min_value=0),
            "o": st.fixed_dictionaries({"x": st.floats(allow_nan=False, allow_infinity=False)}),
        },
        optional={"a": st.lists(st.text()), "j": valid_json_values},
    )
)
def test_valid_data_passes_unchanged_except_defaults(data: dict[str, Any]) -> None:
    out = SCHEMA.validate(data)
    assert out == {"b": False, "a": [], **data}
