"""The one query language, used by queries, lists, subscriptions and guards.

A filter is a dict; several keys are ANDed. A key is a field or a dotted path into nested objects
(a digit segment also indexes a list); `"field[]"` means "the array field contains". A value is
either a plain value (equality: deep for dicts and lists) or a dict of operators: `$eq $ne $gt
$gte $lt $lte $in $nin $exists` (on `field[]`: `$eq $ne $in $nin`, i.e. contains / not contains).

Semantics: a missing field counts as null for equality (`{"f": None}` matches missing or null;
`$ne`/`$nin` match a missing field unless their operand holds null). Booleans are never numbers
(`True` does not equal `1`). `$gt`-style comparisons hold only between two numbers or two strings
(ISO timestamps compare as strings; `datetime` operands become UTC ISO strings) and are simply
false otherwise. Predicates never raise on any record; malformed filters raise `ValidationError`
when compiled, naming the offending key.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Any

from s3db_core.errors import ValidationError
from s3db_core.schema import to_iso

Predicate = Callable[[Any], bool]
Getter = Callable[[Any], Any]

OPERATORS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"})
_CONTAINS_OPERATORS = frozenset({"$eq", "$ne", "$in", "$nin"})
_SCALARS = (str, int, float, bool, type(None))
_MISSING: Any = object()
_BOOL = object()
_UNINDEXABLE = object()


def _fail(field: str, message: str, rule: str = "operator") -> Any:
    raise ValidationError([{"field": field, "rule": rule, "message": message}])


def index_key(value: Any) -> Hashable:
    """A hashable key with `index_key(a) == index_key(b)` iff scalars a, b are equal here.

    Unlike plain `==`, booleans never equal numbers. Lists and dicts get one key that no scalar
    has. The WebSocket plugin indexes subscriptions by `index_key(term value)`.
    """
    if isinstance(value, bool):
        return (_BOOL, value)
    if isinstance(value, _SCALARS):
        return value
    return _UNINDEXABLE


def _eq(a: Any, b: Any) -> bool:
    """Deep equality in which booleans are not numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_eq, a, b))
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_eq(value, b[key]) for key, value in a.items())
        )
    return not isinstance(b, list | dict) and a == b


@functools.lru_cache(maxsize=4096)
def _steps(path: str) -> tuple[tuple[str, int | None], ...]:
    return tuple(
        (seg, int(seg) if seg.isascii() and seg.isdigit() else None) for seg in path.split(".")
    )


def _walk(record: Any, steps: tuple[tuple[str, int | None], ...]) -> Any:
    current = record
    for segment, index in steps:
        if isinstance(current, dict):
            current = current.get(segment, _MISSING)
            if current is _MISSING:
                return _MISSING
        elif index is not None and isinstance(current, list) and index < len(current):
            current = current[index]
        else:
            return _MISSING
    return current


def get_path(record: Any, dotted: str) -> tuple[bool, Any]:
    """`(True, value)` if the dotted path exists in the record, else `(False, None)`."""
    value = _walk(record, _steps(dotted))
    return (False, None) if value is _MISSING else (True, value)


def _compile_path(key: str, path: str) -> Getter:
    if not path or "" in path.split("."):
        _fail(key, "a field path has an empty segment", "path")
    steps = _steps(path)
    if len(steps) == 1:
        name = path

        def get_one(record: Any) -> Any:
            return record.get(name, _MISSING) if isinstance(record, dict) else _MISSING

        return get_one
    return functools.partial(_walk, steps=steps)


def _operand(value: Any) -> Any:
    return to_iso(value) if isinstance(value, datetime) else value


def _member(key: str, op: str, values: Any) -> Callable[[Any], bool]:
    """A test `x in values` under this module's equality (None also stands for missing)."""
    if not isinstance(values, list):
        _fail(key, f"{op} needs a list")
    values = [_operand(value) for value in values]
    keys = frozenset(index_key(value) for value in values if isinstance(value, _SCALARS))
    others = [value for value in values if not isinstance(value, _SCALARS)]

    def member(value: Any) -> bool:
        if isinstance(value, _SCALARS):
            return index_key(value) in keys
        return any(_eq(value, other) for other in others)

    return member


def _equals(value: Any) -> Callable[[Any], bool]:
    """A fast test `x == value` (value already normalized; missing counts as None)."""
    if value is None:
        return lambda x: x is None or x is _MISSING
    if isinstance(value, bool):
        return lambda x: x is value
    if isinstance(value, str):
        return lambda x: x == value
    if isinstance(value, int | float):
        return lambda x: x == value and not isinstance(x, bool)
    return lambda x: _eq(x, value)


def _compare(key: str, op: str, bound: Any) -> Callable[[Any], bool]:
    bound = _operand(bound)
    if isinstance(bound, str):
        kinds: tuple[type, ...] = (str,)
    elif isinstance(bound, int | float) and not isinstance(bound, bool):
        kinds = (int, float)
    else:
        return _fail(key, f"{op} needs a number, a string or a datetime")
    if op == "$gt":
        return lambda x: type(x) in kinds and x > bound
    if op == "$gte":
        return lambda x: type(x) in kinds and x >= bound
    if op == "$lt":
        return lambda x: type(x) in kinds and x < bound
    return lambda x: type(x) in kinds and x <= bound


def _value_test(key: str, op: str, operand: Any) -> Callable[[Any], bool]:
    """A test on the field's value (`_MISSING` when absent) for one operator."""
    if op == "$eq":
        return _equals(_operand(operand))
    if op == "$ne":
        equals = _equals(_operand(operand))
        return lambda x: not equals(x)
    if op in ("$in", "$nin"):
        member = _member(key, op, operand)
        if op == "$in":
            return lambda x: member(None if x is _MISSING else x)
        return lambda x: not member(None if x is _MISSING else x)
    if op == "$exists":
        if not isinstance(operand, bool):
            _fail(key, "$exists needs true or false")
        return (lambda x: x is not _MISSING) if operand else (lambda x: x is _MISSING)
    if op in OPERATORS:
        return _compare(key, op, operand)
    return _fail(key, f"unknown operator {op!r}")


def _contains_test(key: str, op: str, operand: Any) -> Callable[[Any], bool]:
    """A test on the field's value for `field[]`: does the array hold a matching element."""
    if op not in _CONTAINS_OPERATORS:
        qualifier = "" if op in OPERATORS else "unknown "
        _fail(key, f"{qualifier}operator {op!r} on an array field (use $eq, $ne, $in, $nin)")
    member = _member(key, op, operand if op in ("$in", "$nin") else [operand])

    def contains(x: Any) -> bool:
        return isinstance(x, list) and any(map(member, x))

    if op in ("$eq", "$in"):
        return contains
    return lambda x: not contains(x)


def _all(tests: list[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    if len(tests) == 1:
        return tests[0]

    def every(x: Any) -> bool:
        return all(test(x) for test in tests)

    return every


def _operators(key: str, value: Any) -> dict[str, Any]:
    """The operator dict of a filter value: `{"$eq": value}` for a plain value."""
    if isinstance(value, dict) and any(isinstance(k, str) and k.startswith("$") for k in value):
        if not all(isinstance(k, str) and k.startswith("$") for k in value):
            _fail(key, "mixes $operators and plain fields (use {'$eq': {...}} for a literal)")
        return value
    return {"$eq": value}


def _compile_key(key: Any, value: Any) -> Predicate:
    if not isinstance(key, str):
        _fail(str(key), "filter keys must be strings", "path")
    if key.startswith("$"):
        _fail(key, f"unknown operator {key!r} (filters are field: value pairs)")
    contains = key.endswith("[]")
    get = _compile_path(key, key[:-2] if contains else key)
    make = _contains_test if contains else _value_test
    test = _all([make(key, op, operand) for op, operand in _operators(key, value).items()])
    return lambda record: test(get(record))


def _match_all(record: Any) -> bool:
    return True


def _check(filter: Any) -> dict[Any, Any]:
    if filter is None:
        return {}
    if not isinstance(filter, dict):
        _fail("filter", "a filter must be an object", "type")
    return filter


def compile_filter(filter: dict[str, Any] | None) -> Predicate:
    """A predicate `record -> bool` for the filter; None or {} matches everything."""
    predicates = [_compile_key(key, value) for key, value in _check(filter).items()]
    if not predicates:
        return _match_all
    if len(predicates) == 1:
        return predicates[0]

    def every(record: Any) -> bool:
        for predicate in predicates:
            if not predicate(record):
                return False
        return True

    return every


def matches(record: Any, filter: dict[str, Any] | None) -> bool:
    """Whether the record matches (compiles the filter each call: reuse compile_filter in loops)."""
    return compile_filter(filter)(record)


def equality_terms(filter: dict[str, Any] | None) -> dict[str, Any]:
    """Fields pinned to a scalar by plain equality or `$eq`: `{key: value}`.

    Exact: a record matches the filter only if, for each term, the value at `key` (a dotted path;
    missing counts as None) equals `value` with `index_key(found) == index_key(value)`.
    """
    terms = {}
    for key, value in _check(filter).items():
        if not isinstance(key, str) or key.startswith("$") or key.endswith("[]"):
            continue
        if isinstance(value, dict):
            if not value or not all(isinstance(k, str) and k.startswith("$") for k in value):
                continue
            if "$eq" not in value:
                continue
            value = value["$eq"]
        value = _operand(value)
        if isinstance(value, _SCALARS):
            terms[key] = value
    return terms
