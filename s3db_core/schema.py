"""Record schemas: the `type|rule|rule:value` DSL, parsed once and checked on every write.

Types: string, number, boolean, array (`items:T`), json (any JSON value), object (a nested dict
of specs; `"$$type": "object|required"` inside it marks the object itself required), datetime
(ISO-8601 string or `datetime`, stored as UTC `YYYY-MM-DDTHH:MM:SS.mmmZ` so that string order is
time order; naive values are taken as UTC), email, secret (a string stored as-is: list it in the
WebSocket plugin's `protected` so it never leaves the server).

Rules: required, optional (the default), default:V (JSON when it parses, else the raw text; for
string-like types a non-string JSON value stays raw text), min/max (numbers: the value; strings and
arrays: the length), minlength/maxlength, integer, enum:a,b,c, items:T (arrays).

Bad data raises `ValidationError` listing every failing field (dotted paths for nested fields and
array items). A bad schema is a programmer error and raises `ValueError` at construction.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from s3db_core.errors import ValidationError

TYPES = frozenset(
    {"string", "number", "boolean", "array", "json", "object", "datetime", "email", "secret"}
)
_STRING_TYPES = frozenset({"string", "email", "secret", "datetime"})
_SIZED_TYPES = frozenset({"string", "email", "secret", "array"})
_ITEM_TYPES = frozenset({"string", "number", "boolean", "json", "datetime", "email", "secret"})
_RULE_TYPES: dict[str, frozenset[str]] = {
    "required": TYPES,
    "optional": TYPES,
    "default": TYPES,
    "min": _SIZED_TYPES | {"number"},
    "max": _SIZED_TYPES | {"number"},
    "minlength": _SIZED_TYPES,
    "maxlength": _SIZED_TYPES,
    "integer": frozenset({"number"}),
    "enum": frozenset({"string", "number", "email"}),
    "items": frozenset({"array"}),
}
_FLAG_RULES = frozenset({"required", "optional", "integer"})
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")
_MISSING: Any = object()

Error = dict[str, str]


class _Invalid(Exception):
    """A value failed its type or format check."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


def to_iso(value: datetime) -> str:
    """A datetime as UTC ISO-8601 with milliseconds and `Z`; naive datetimes are taken as UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="milliseconds") + "Z"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_json(value: Any) -> bool:
    """True for null, bool, finite numbers, strings, lists and string-keyed dicts thereof."""
    stack = [value]
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, str | bool | int):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if not all(isinstance(key, str) for key in item):
                return False
            stack.extend(item.values())
        else:
            return False
    return True


def _to_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Invalid("type", "must be a string")


def _to_number(value: Any) -> int | float:
    if _is_number(value):
        return value
    raise _Invalid("type", "must be a finite number")


def _to_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _Invalid("type", "must be a boolean")


def _to_json(value: Any) -> Any:
    if _is_json(value):
        return value
    raise _Invalid(
        "type", "must be JSON (null, boolean, finite number, string, list, string-keyed object)"
    )


def _to_email(value: Any) -> str:
    value = _to_string(value)
    if len(value) <= 254 and _EMAIL.fullmatch(value):
        return value
    raise _Invalid("format", "must be an email address")


def _to_datetime(value: Any) -> str:
    try:
        if isinstance(value, datetime):
            return to_iso(value)
        if isinstance(value, str):
            return to_iso(datetime.fromisoformat(value))
    except (ValueError, OverflowError) as exc:
        raise _Invalid("format", "must be an ISO-8601 datetime") from exc
    raise _Invalid("type", "must be an ISO-8601 datetime string or a datetime")


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "string": _to_string,
    "secret": _to_string,
    "number": _to_number,
    "boolean": _to_boolean,
    "json": _to_json,
    "email": _to_email,
    "datetime": _to_datetime,
}


class FieldSpec:
    """One parsed attribute: its dotted `path`, `type`, `required`, `default`, `rules`, etc.

    `rules` holds the parsed values of min/max/minlength/maxlength/integer/enum; `items` is the
    element type of an array; `props` the nested specs of an object.
    """

    __slots__ = ("path", "type", "required", "default", "rules", "items", "props", "_checks")

    def __init__(self, path: str, type_: str) -> None:
        self.path = path
        self.type = type_
        self.required = False
        self.default: Any = _MISSING
        self.rules: dict[str, Any] = {}
        self.items: str | None = None
        self.props: dict[str, FieldSpec] | None = None
        self._checks: list[tuple[str, Callable[[Any], bool], str]] = []

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING

    def make_default(self) -> Any:
        """The default value; lists and dicts are fresh copies on every call."""
        if isinstance(self.default, list | dict):
            return copy.deepcopy(self.default)
        return self.default

    def check(self, value: Any, errors: list[Error]) -> Any:
        """Return the normalized value, appending an error for every rule it breaks."""
        try:
            if self.props is not None:
                if not isinstance(value, dict):
                    raise _Invalid("type", "must be an object")
                return _validate_fields(self.props, value, self.path + ".", errors, ())
            if self.type == "array":
                value = self._check_array(value, errors)
            else:
                value = _CONVERTERS[self.type](value)
        except _Invalid as exc:
            errors.append({"field": self.path, "rule": exc.rule, "message": exc.message})
            return value
        for rule, passes, message in self._checks:
            if not passes(value):
                errors.append({"field": self.path, "rule": rule, "message": message})
        return value

    def _check_array(self, value: Any, errors: list[Error]) -> list[Any]:
        if not isinstance(value, list | tuple):
            raise _Invalid("type", "must be an array")
        if self.items is None:
            return _to_json(list(value))
        convert = _CONVERTERS[self.items]
        out = []
        for index, item in enumerate(value):
            try:
                out.append(convert(item))
            except _Invalid as exc:
                errors.append(
                    {"field": f"{self.path}.{index}", "rule": exc.rule, "message": exc.message}
                )
                out.append(item)
        return out


def _length_check(rule: str, bound: int, type_: str) -> tuple[str, Callable[[Any], bool], str]:
    unit = "items" if type_ == "array" else "characters"
    if rule in ("min", "minlength"):
        return rule, lambda v: len(v) >= bound, f"must have at least {bound} {unit}"
    return rule, lambda v: len(v) <= bound, f"must have at most {bound} {unit}"


def _parse_json(value: str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def _parse_rule(spec: FieldSpec, rule: str, value: str | None) -> None:
    """Apply one `rule[:value]` to `spec`, raising ValueError when it does not fit."""
    where = f"schema field {spec.path!r}"
    if rule not in _RULE_TYPES:
        raise ValueError(f"{where}: unknown rule {rule!r}")
    if spec.type not in _RULE_TYPES[rule]:
        raise ValueError(f"{where}: rule {rule!r} does not apply to type {spec.type!r}")
    if (value is None) != (rule in _FLAG_RULES):
        shape = "takes no value" if rule in _FLAG_RULES else "needs a value (rule:value)"
        raise ValueError(f"{where}: rule {rule!r} {shape}")
    text = value or ""  # every rule below that reads it has one (checked above)
    if rule in ("required", "optional"):
        spec.required = rule == "required"
    elif rule == "integer":
        spec.rules["integer"] = True
        spec._checks.append(
            ("integer", lambda v: isinstance(v, int) or v.is_integer(), "must be an integer")
        )
    elif value is None:  # only flag rules go without a value (checked above)
        return
    elif rule == "default":
        parsed = _parse_json(text)
        if spec.type in _STRING_TYPES and not isinstance(parsed, str):
            parsed = text
        spec.default = parsed
    elif rule == "items":
        if value not in _ITEM_TYPES:
            raise ValueError(f"{where}: items:{value} is not one of {sorted(_ITEM_TYPES)}")
        spec.items = value
    elif rule == "enum":
        _parse_enum(spec, text, where)
    else:
        _parse_bound(spec, rule, text, where)


def _parse_enum(spec: FieldSpec, value: str, where: str) -> None:
    options = tuple(part.strip() for part in value.split(","))
    if spec.type == "number":
        options = tuple(_parse_json(part) for part in options)
        if not all(_is_number(option) for option in options):
            raise ValueError(f"{where}: enum values of a number must be numbers")
    if not all(option != "" for option in options):
        raise ValueError(f"{where}: enum has an empty value")
    spec.rules["enum"] = options
    allowed = frozenset(options)
    spec._checks.append(
        ("enum", allowed.__contains__, "must be one of " + ", ".join(map(str, options)))
    )


def _parse_bound(spec: FieldSpec, rule: str, value: str, where: str) -> None:
    bound = _parse_json(value)
    if not _is_number(bound):
        raise ValueError(f"{where}: {rule} needs a number, got {value!r}")
    spec.rules[rule] = bound
    if spec.type != "number":
        if not isinstance(bound, int) or bound < 0:
            raise ValueError(f"{where}: {rule} needs a non-negative integer length")
        spec._checks.append(_length_check(rule, bound, spec.type))
    elif rule == "min":
        spec._checks.append((rule, lambda v: v >= bound, f"must be >= {bound}"))
    else:
        spec._checks.append((rule, lambda v: v <= bound, f"must be <= {bound}"))


def _check_name(path: str, name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"schema field {path}{name!r}: names must be non-empty strings")
    if "." in name or name.startswith("$") or name.endswith("[]"):
        raise ValueError(
            f"schema field {path}{name!r}: names may not contain '.', start with '$' or end with '[]'"
        )


def _parse_field(path: str, definition: Any) -> FieldSpec:
    if isinstance(definition, dict):
        return _parse_object(path, definition)
    if not isinstance(definition, str):
        raise ValueError(f"schema field {path!r}: a spec is a string or a nested dict")
    type_, *rules = (part.strip() for part in definition.split("|"))
    if type_ == "object":
        raise ValueError(
            f"schema field {path!r}: an object is a nested dict of specs ('json' for free-form)"
        )
    if type_ not in TYPES:
        raise ValueError(f"schema field {path!r}: unknown type {type_!r}")
    spec = FieldSpec(path, type_)
    for rule in rules:
        name, sep, value = rule.partition(":")
        _parse_rule(spec, name.strip(), value if sep else None)
    if spec.has_default:
        errors: list[Error] = []
        spec.default = spec.check(spec.default, errors)
        if errors:
            raise ValueError(f"schema field {path!r}: default {errors[0]['message']}")
    return spec


def _parse_object(path: str, definition: dict[str, Any]) -> FieldSpec:
    spec = FieldSpec(path, "object")
    header = definition.get("$$type", "object")
    type_, *rules = (part.strip() for part in str(header).split("|"))
    if type_ != "object":
        raise ValueError(f"schema field {path!r}: $$type must start with 'object'")
    for rule in rules:
        if rule not in ("required", "optional"):
            raise ValueError(f"schema field {path!r}: $$type allows only required/optional")
        spec.required = rule == "required"
    spec.props = _parse_fields(definition, path + ".")
    return spec


def _parse_fields(attributes: dict[str, Any], prefix: str) -> dict[str, FieldSpec]:
    fields = {}
    for name, definition in attributes.items():
        if name == "$$type" and prefix:
            continue
        _check_name(prefix, name)
        fields[name] = _parse_field(prefix + name, definition)
    return fields


def _validate_fields(
    fields: dict[str, FieldSpec],
    data: dict[Any, Any],
    prefix: str,
    errors: list[Error],
    passthrough: tuple[str, ...],
) -> dict[str, Any]:
    out = {}
    for key in passthrough:  # a loop, not a comprehension: no function frame per record
        if key in data:
            out[key] = data[key]
    for name, spec in fields.items():
        value = data.get(name, _MISSING)
        if value is None:
            if spec.required:
                errors.append({"field": spec.path, "rule": "required", "message": "is required"})
            out[name] = None
        elif value is not _MISSING:
            out[name] = spec.check(value, errors)
        elif spec.has_default:
            out[name] = spec.make_default()
        elif spec.required:
            errors.append({"field": spec.path, "rule": "required", "message": "is required"})
    for key in data:
        if key not in fields and key not in passthrough:
            errors.append(
                {"field": f"{prefix}{key}", "rule": "unknown", "message": "unknown field"}
            )
    return out


class Schema:
    """A resource's attributes. `validate(data)` returns a new, checked dict with defaults."""

    def __init__(self, attributes: dict[str, Any], *, timestamps: bool = False) -> None:
        if not isinstance(attributes, dict):
            raise ValueError("schema attributes must be a dict of field specs")
        self.timestamps = timestamps
        self.system_fields: tuple[str, ...] = ("id",)
        if timestamps:
            self.system_fields += ("createdAt", "updatedAt")
        for name in self.system_fields:
            if name in attributes:
                raise ValueError(f"schema field {name!r} is managed by the database")
        self._attributes = copy.deepcopy(attributes)
        self.fields: dict[str, FieldSpec] = _parse_fields(attributes, "")

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        """A new dict with defaults applied; raises ValidationError listing every failing field.

        System fields (`id`, and `createdAt`/`updatedAt` with timestamps) pass through unchecked.
        """
        if not isinstance(data, dict):
            raise ValidationError(
                [{"field": "", "rule": "type", "message": "a record must be an object"}]
            )
        errors: list[Error] = []
        out = _validate_fields(self.fields, data, "", errors, self.system_fields)
        if errors:
            raise ValidationError(errors)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The attribute definitions as given (JSON-able), for persisting in s3db.json."""
        return copy.deepcopy(self._attributes)
