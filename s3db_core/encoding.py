"""Record <-> S3 object encoding: fields in user metadata within the 2 KB budget, the rest in a body.

Metadata keys: ``f`` + the field name with every byte outside ``[a-z0-9]`` written as ``-xx``
(hex), so names keep their case although S3 lower-cases metadata keys. System keys start with
``s`` (``sv`` format version, ``sb`` "the body holds fields"). Values are ASCII JSON; a value whose
JSON holds two spaces in a row (which request signing would fold) is stored as ``~`` + base64url
of its JSON.

The body is a random revision line, then (when ``sb`` is set) a JSON object of the fields that
did not fit. The revision matters: S3 ETags hash the body only, so two versions that differ only
in metadata would share an ETag and an ``If-Match`` update could overwrite a newer version.
"""

from __future__ import annotations

import base64
import json
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
    try:
        text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise ValidationError([{"field": "", "rule": "json", "message": str(exc)}]) from exc
    if "\x7f" in text:  # DEL is ASCII but not allowed in an HTTP header value
        text = text.replace("\x7f", "\\u007f")
    if "  " in text:
        return "~" + base64.urlsafe_b64encode(text.encode()).decode()
    return text


def decode_value(text: str) -> Any:
    if text.startswith("~"):
        text = base64.urlsafe_b64decode(text[1:]).decode()
    return json.loads(text)


def dumps_body(fields: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(fields)
    except (TypeError, orjson.JSONEncodeError):
        # orjson refuses integers beyond 64 bits and lone surrogates; the stdlib does not.
        return json.dumps(fields, separators=(",", ":"), allow_nan=False).encode()


def loads_body(body: bytes) -> dict[str, Any]:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def _cost(key: str, value: str) -> int:
    return len(key) + len(value)


def encode_record(fields: dict[str, Any], behavior: str = "body-overflow") -> tuple[dict[str, str], bytes]:
    """Split ``fields`` (a record without its id) into (metadata, body) under ``behavior``."""
    if behavior == "body-only":
        return dict((_VERSION, _BODY_FLAG)), _revision() + dumps_body(fields)
    metadata: dict[str, str] = {}
    overflow: dict[str, Any] = {}
    budget = METADATA_LIMIT - _SYSTEM_COST
    for name, value in fields.items():
        key = encode_key(name)
        try:
            text = encode_value(value)
        except ValidationError as exc:
            raise ValidationError([{**exc.errors[0], "field": name}]) from None
        cost = _cost(key, text)
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
    return os.urandom(8).hex().encode() + b"\n"


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
        key = key.lower()
        if key.startswith("f"):
            fields[decode_key(key)] = decode_value(text)
    if metadata.get("sb") == "1":
        fields.update(loads_body(body[body.index(b"\n") + 1 :]))
    return fields


def metadata_size(metadata: dict[str, str]) -> int:
    return sum(_cost(k, v) for k, v in metadata.items())
