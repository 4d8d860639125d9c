"""Record <-> S3 object encoding: fields in user metadata within the 2 KB budget, the rest in a body.

Metadata keys: ``f`` + the field name with every byte outside ``[a-z0-9]`` written as ``-xx``
(hex), so names keep their case although S3 lower-cases metadata keys. System keys start with
``s`` (``sv`` format version, ``sb`` "the body holds fields", ``sr`` the record's system
version). Values are ASCII JSON; a value whose
JSON holds two spaces in a row (which request signing would fold) is stored as ``~`` + base64url
of its JSON.

The body is a random revision line, then (when ``sb`` is set) a JSON object of the fields that
did not fit. The revision matters: S3 ETags hash the body only, so two versions that differ only
in metadata would share an ETag and an ``If-Match`` update could overwrite a newer version.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import os
import re
from typing import Any

import orjson

from .errors import ValidationError

METADATA_LIMIT = 2048
BEHAVIORS = ("body-overflow", "body-only", "enforce-limits", "truncate-data")
_VERSION = ("sv", "1")
_BODY_FLAG = ("sb", "1")
_SYSTEM_COST = len("sv") + len("1") + len("sb") + len("1")
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_ESCAPE = re.compile(r"-([0-9a-f]{2})")
# orjson reads integers beyond 64 bits as floats: JSON holding such a digit run goes to the stdlib.
_LONG_DIGITS = re.compile(r"[0-9]{19}")
_LONG_DIGITS_BYTES = re.compile(rb"[0-9]{19}")
_CONSTANTS = {"true": True, "false": False, "null": None}


@functools.lru_cache(maxsize=4096)
def encode_key(field: str) -> str:
    """Metadata key for a field name (reversible, lower-case ASCII)."""
    if all(c in _SAFE for c in field):
        return "f" + field
    out = []
    for ch in field:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"-{b:02x}" for b in ch.encode("utf-8"))
    return "f" + "".join(out)


@functools.lru_cache(maxsize=4096)
def decode_key(key: str) -> str:
    raw = key[1:]
    if "-" not in raw:
        return raw
    data = _ESCAPE.sub(lambda m: "\x00" + m.group(1), raw)
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i] == "\x00":
            out.append(int(data[i + 1 : i + 3], 16))
            i += 3
        else:
            out += data[i].encode()
            i += 1
    return out.decode("utf-8")


def encode_value(value: Any) -> str:
    kind = type(value)
    if kind is str:
        # orjson is several times faster than the stdlib and writes ASCII strings the same way.
        text = orjson.dumps(value).decode() if value.isascii() else json.dumps(value)
    elif kind is int:
        return int.__repr__(value)
    elif kind is float and math.isfinite(value):
        return float.__repr__(value)
    elif value is None or kind is bool:
        return "null" if value is None else "true" if value else "false"
    else:
        try:
            text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
        except ValueError as exc:
            raise ValidationError([{"field": "", "rule": "json", "message": str(exc)}]) from exc
    if "\x7f" in text:  # DEL is ASCII but not allowed in an HTTP header value
        text = text.replace("\x7f", "\\u007f")
    if "  " in text:
        return "~" + base64.urlsafe_b64encode(text.encode()).decode()
    return text


def _loads(text: str | bytes, long_digits: re.Pattern) -> Any:
    """JSON through orjson when it reads it exactly, else through the stdlib."""
    if long_digits.search(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # lone surrogates, very deep nesting: the stdlib reads them
    return json.loads(text)


def decode_value(text: str) -> Any:
    first = text[:1]
    if first == '"' and "\\" not in text and len(text) > 1 and text[-1] == '"':
        return text[1:-1]  # a JSON string without escapes is its own content
    if first == "~":
        text = base64.urlsafe_b64decode(text[1:]).decode()
    elif text.isdigit() and text.isascii():
        return int(text)
    elif text in _CONSTANTS:
        return _CONSTANTS[text]
    return _loads(text, _LONG_DIGITS)


def dumps_body(fields: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(fields)
    except (TypeError, orjson.JSONEncodeError):
        # orjson refuses integers beyond 64 bits and lone surrogates; the stdlib does not.
        return json.dumps(fields, separators=(",", ":"), allow_nan=False).encode()


def loads_body(body: bytes) -> dict[str, Any]:
    return _loads(body, _LONG_DIGITS_BYTES)


def _cost(key: str, value: str) -> int:
    return len(key) + len(value)


def encode_record(
    fields: dict[str, Any], behavior: str = "body-overflow", system: dict[str, str] | None = None
) -> tuple[dict[str, str], bytes]:
    """Split ``fields`` (a record without its id) into (metadata, body) under ``behavior``.

    ``system`` holds system metadata (keys starting with ``s``) stored beside the fields; it
    counts against the metadata budget."""
    if behavior == "body-only":
        return {**(system or {}), **dict((_VERSION, _BODY_FLAG))}, _revision() + dumps_body(fields)
    metadata: dict[str, str] = dict(system) if system else {}
    overflow: dict[str, Any] = {}
    budget = METADATA_LIMIT - _SYSTEM_COST
    for key, text in metadata.items():
        budget -= len(key) + len(text)
    for name, value in fields.items():
        key = encode_key(name)
        try:
            text = encode_value(value)
        except ValidationError as exc:
            raise ValidationError([{**exc.errors[0], "field": name}]) from None
        cost = len(key) + len(text)  # _cost, inlined: once per field of every write
        if cost <= budget:
            metadata[key] = text
            budget -= cost
        elif behavior == "enforce-limits":
            raise ValidationError(
                [{"field": name, "rule": "metadata-limit",
                  "message": f"record exceeds the {METADATA_LIMIT}-byte metadata limit"}]
            )
        elif behavior == "truncate-data":
            if isinstance(value, str):
                cut = _truncate(key, value, budget)
                if cut is not None:
                    metadata[key] = cut
                    budget -= _cost(key, cut)
        else:
            overflow[name] = value
    metadata["sv"] = "1"
    if overflow:
        metadata["sb"] = "1"
        return metadata, _revision() + dumps_body(overflow)
    return metadata, _revision()


def _revision() -> bytes:
    return binascii.hexlify(os.urandom(8)) + b"\n"


def _truncate(key: str, value: str, budget: int) -> str | None:
    """The longest prefix of ``value`` whose encoding fits ``budget``, or None."""
    lo, hi, best = 0, len(value), None
    while lo <= hi:
        mid = (lo + hi) // 2
        text = encode_value(value[:mid])
        if _cost(key, text) <= budget:
            best, lo = text, mid + 1
        else:
            hi = mid - 1
    return best


def decode_record(metadata: dict[str, str], body: bytes) -> dict[str, Any]:
    """Fields of a stored record (without its id)."""
    fields: dict[str, Any] = {}
    for key, text in metadata.items():
        name = _field_name(key)
        if name is None:
            continue
        if text[:1] == '"' and text[-1] == '"' and len(text) > 1 and "\\" not in text:
            fields[name] = text[1:-1]  # decode_value's common case, without the call
        else:
            fields[name] = decode_value(text)
    if metadata.get("sb") == "1":
        fields.update(loads_body(body[body.index(b"\n") + 1 :]))
    return fields


@functools.lru_cache(maxsize=4096)
def _field_name(key: str) -> str | None:
    """The field a metadata key holds, or None for a system key."""
    key = key.lower()
    return decode_key(key) if key.startswith("f") else None


def metadata_size(metadata: dict[str, str]) -> int:
    return sum(_cost(k, v) for k, v in metadata.items())
