"""The one query language, used by queries, lists, subscriptions and guards.

A filter is a dict; several keys are ANDed. A key is a field or a dotted path into nested objects
(a digit segment also indexes a list); `"field[]"` means "the array field contains". A value is
either a plain value (equality: deep for dicts and lists) or a dict of operators: `$eq $ne $gt
$gte $lt $lte $in $nin $exists` (on `field[]`: `$eq $ne $in $nin`, i.e. contains / not contains).
`{"$or": [f1, f2, ...]}` matches when any of the filters does, `{"$and": [...]}` when all do; they
nest, and sit beside plain keys (`{"roomId": "r1", "$or": [...]}`).

Filters that come from outside (a client's frame) are bounded before they are compiled:
`check_limits(filter, FilterLimits())` refuses one with too many keys or operators, nested too
deep, with too long an `$in`/`$nin` list or too big overall (`FilterLimitError`, a
`ValidationError` naming the limit), so that compiling and keeping it costs little.

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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from s3db_core.errors import ValidationError
from s3db_core.options import positive_int
from s3db_core.schema import to_iso

Predicate = Callable[[Any], bool]
Getter = Callable[[Any], Any]

OPERATORS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"})
_CONTAINS_OPERATORS = frozenset({"$eq", "$ne", "$in", "$nin"})
LOGICAL = frozenset({"$or", "$and"})
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
    if key in LOGICAL:
        return _compile_logical(key, value)
    if key.startswith("$"):
        _fail(key, f"unknown operator {key!r} (filters are field: value pairs, $or, $and)")
    contains = key.endswith("[]")
    get = _compile_path(key, key[:-2] if contains else key)
    make = _contains_test if contains else _value_test
    test = _all([make(key, op, operand) for op, operand in _operators(key, value).items()])
    return lambda record: test(get(record))


def _compile_logical(key: str, value: Any) -> Predicate:
    if not isinstance(value, list) or not value or not all(isinstance(f, dict) for f in value):
        _fail(key, f"{key} needs a non-empty list of filters")
    predicates = [compile_filter(f) for f in value]
    if len(predicates) == 1:
        return predicates[0]
    if key == "$or":
        return lambda record: any(p(record) for p in predicates)
    return lambda record: all(p(record) for p in predicates)


def _match_all(record: Any) -> bool:
    return True


def _check(filter: Any) -> dict[Any, Any]:
    if filter is None:
        return {}
    if not isinstance(filter, dict):
        _fail("filter", "a filter must be an object", "type")
    return filter


def compile_filter(filter: dict[str, Any] | None, limits: FilterLimits | None = None) -> Predicate:
    """A predicate `record -> bool` for the filter; None or {} matches everything. With
    ``limits``, the filter is checked against them first (``FilterLimitError``)."""
    if limits is not None:
        check_limits(filter, limits)
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


# -- bounds on filters from outside ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FilterLimits:
    """Bounds on a filter that comes from outside, checked before it is compiled.

    ``max_keys``: field conditions, counted across every ``$or``/``$and`` branch;
    ``max_operators``: ``$`` entries (``$gt``, ``$in``, ``$or``...); ``max_depth``: nesting of
    the filter's JSON (objects and arrays; ``{"a": 1}`` is 1, ``{"a": {"$in": [1]}}`` is 3);
    ``max_in``: items of one ``$in``/``$nin`` list; ``max_size``: characters of every key and
    string plus 8 per other value (about the size of its JSON).
    """

    max_keys: int = 64
    max_operators: int = 64
    max_depth: int = 10
    max_in: int = 256
    max_size: int = 16384

    @classmethod
    def from_config(cls, config: Any) -> FilterLimits:
        """From None (the defaults) or a dict of some of the fields; ValueError when malformed."""
        if config is None:
            return cls()
        if isinstance(config, FilterLimits):
            return config
        if not isinstance(config, dict):
            raise ValueError("filter_limits must be a dict")
        names = set(cls.__dataclass_fields__)
        unknown = set(config) - names
        if unknown:
            raise ValueError(
                f"filter_limits: unknown key(s) {sorted(unknown)}; use {sorted(names)}"
            )
        for name, value in config.items():
            positive_int(f"filter_limits {name!r}", value)
        return cls(**config)


class FilterLimitError(ValidationError):
    """A filter over one of its ``FilterLimits``: ``limit`` names it, ``max`` is its value."""

    def __init__(self, limit: str, maximum: int, message: str) -> None:
        super().__init__([{"field": "filter", "rule": f"max_{limit}", "message": message}])
        self.limit = limit
        self.max = maximum
        self.message = message


def check_limits(filter: Any, limits: FilterLimits) -> None:
    """Raise ``FilterLimitError`` if ``filter`` exceeds ``limits``. Walks it once without
    recursion and stops at the first limit passed, so a huge filter costs no more than a small
    one."""
    if not isinstance(filter, dict):
        return  # compile_filter says what is wrong with it
    counts = {"keys": 0, "operators": 0, "size": 0}

    def add(limit: str, n: int) -> None:
        counts[limit] += n
        maximum = getattr(limits, f"max_{limit}")
        if counts[limit] > maximum:
            raise FilterLimitError(limit, maximum, _LIMIT_MESSAGES[limit].format(maximum))

    # (value, depth, whether it is a filter object whose keys are field conditions)
    stack: list[tuple[Any, int, bool]] = [(filter, 1, True)]
    while stack:
        value, depth, is_filter = stack.pop()
        if not isinstance(value, dict | list):
            add("size", 8 + (len(value) if isinstance(value, str) else 0))
            continue
        if depth > limits.max_depth:
            raise FilterLimitError(
                "depth", limits.max_depth, _LIMIT_MESSAGES["depth"].format(limits.max_depth)
            )
        if isinstance(value, list):
            add("size", 8 + len(value))  # at least a separator per item: a huge list stops here
            stack.extend((item, depth + 1, is_filter) for item in value)
            continue
        for key, item in value.items():
            name = key if isinstance(key, str) else ""
            add("size", 8 + len(name))
            if name.startswith("$"):
                add("operators", 1)
                if name in ("$in", "$nin") and isinstance(item, list) and len(item) > limits.max_in:
                    raise FilterLimitError(
                        "in", limits.max_in, _LIMIT_MESSAGES["in"].format(name, limits.max_in)
                    )
                stack.append((item, depth + 1, is_filter and name in LOGICAL))
            else:
                if is_filter:
                    add("keys", 1)
                stack.append((item, depth + 1, False))


_LIMIT_MESSAGES = {
    "keys": "filter has more than {} keys",
    "operators": "filter has more than {} operators",
    "depth": "filter is nested deeper than {} levels",
    "in": "{} lists more than {} values",
    "size": "filter is bigger than {} characters",
}
