"""Input limits checked before any store request, and the nested merge of an update's patch.

``Limits`` holds what a Database allows (nesting depth, encoded record size); keys are checked
against the storage client's own key limit (``key_problem``). Each failure is a
``ValidationError`` naming the field and the limit.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import ValidationError
from .options import positive_int

DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_RECORD_SIZE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """What one record may be: ``max_depth`` levels of nested objects/arrays (a flat record is
    depth 1) and ``max_record_size`` bytes once encoded (metadata and body together)."""

    max_depth: int = DEFAULT_MAX_DEPTH
    max_record_size: int = DEFAULT_MAX_RECORD_SIZE

    def __post_init__(self) -> None:
        for name in ("max_depth", "max_record_size"):
            positive_int(name, getattr(self, name))


def _invalid(field: str, rule: str, message: str) -> ValidationError:
    return ValidationError([{"field": field, "rule": rule, "message": message}])


def check_depth(data: Any, max_depth: int) -> None:
    """Raise ValidationError when ``data`` nests deeper than ``max_depth`` (iterative: a record
    a thousand levels deep is refused without recursion)."""
    if isinstance(data, dict) and max_depth >= 1:
        for value in data.values():
            if isinstance(value, dict | list | tuple):
                break
        else:
            return  # a flat record: depth 1
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    while stack:
        value, depth, field = stack.pop()
        children: Iterable[tuple[Any, Any]]
        if isinstance(value, dict):
            children = value.items()
        elif isinstance(value, list | tuple):
            children = enumerate(value)
        else:
            continue
        depth += 1
        if depth > max_depth:
            raise _invalid(field, "depth", f"nesting deeper than {max_depth} levels")
        for key, child in children:
            if isinstance(child, dict | list | tuple):
                stack.append((child, depth, field or str(key)))


def check_size(size: int, max_size: int) -> None:
    if size > max_size:
        raise _invalid("", "size", f"the encoded record is {size} bytes, over the {max_size}-byte limit")


def merge_patch(
    base: dict[str, Any], patch: dict[str, Any], fields: Any, skip: Container[str] = ()
) -> dict[str, Any]:
    """``base`` with ``patch`` merged in, as a new dict (``base`` is not changed), leaving out
    the top-level keys in ``skip`` (of both).

    Objects merge recursively; arrays, scalars and ``None`` replace. A key with dots that is not
    itself a field (``"profile.city"``) sets that nested path, creating objects on the way."""
    out = {k: v for k, v in base.items() if k not in skip} if skip else dict(base)
    for key, value in patch.items():
        if key in skip:
            continue
        if "." in key and key not in fields:
            parts = key.split(".")
            if any(not p for p in parts):
                raise _invalid(key, "path", "a dotted path needs a name between every two dots")
            target = out
            for part in parts[:-1]:
                child = target.get(part)
                child = dict(child) if isinstance(child, dict) else {}
                target[part] = child
                target = child
            _merge_into(target, parts[-1], value)
        else:
            _merge_into(out, key, value)
    return out


def _merge_into(target: dict[str, Any], key: str, value: Any) -> None:
    """Below the top level keys are plain names (a json field may hold ``"file.txt"``)."""
    old = target.get(key)
    if isinstance(value, dict) and isinstance(old, dict):
        merged = dict(old)
        for k, v in value.items():
            _merge_into(merged, k, v)
        target[key] = merged
    else:
        target[key] = value
