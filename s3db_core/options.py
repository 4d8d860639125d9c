"""Validators of configuration options: one rule per kind of value and one error shape.

Every constructor and config dict of the project (``Database``, ``WebSocketPlugin``, the
brokers' options, the rate limiters, the S3 store's URL options, ``s3db serve``'s flags) checks
its numbers here, so the same mistake gets the same answer everywhere::

    ValueError("max_subscriptions must be a positive integer, got 0")

``name`` is how the user wrote the option (``"max_subscriptions"``, ``"broker option
'history_size'"``). Booleans are never numbers, nor are NaN and infinities. Values from URLs and
command lines are text: ``number_in(..., text=True)`` parses them first.
"""

from __future__ import annotations

import math
from typing import Any

_SHOWN = 60  # characters of a rejected value repeated in the message


def problem(name: str, expected: str, value: Any) -> ValueError:
    """The one error shape: ``<name> must be <expected>, got <value>`` (value shortened)."""
    shown = repr(value)
    if len(shown) > _SHOWN:
        shown = shown[: _SHOWN - 3] + "..."
    return ValueError(f"{name} must be {expected}, got {shown}")


def _shown(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def positive_int(name: str, value: Any) -> int:
    """An integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise problem(name, "a positive integer", value)
    return value


def optional_positive_int(name: str, value: Any) -> int | None:
    """An integer >= 1, or None (no cap)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise problem(name, "a positive integer or None (no cap)", value)
    return value


def positive_float(name: str, value: Any) -> float:
    """A finite number > 0, as a float."""
    if not _number(value) or value <= 0:
        raise problem(name, "a positive number", value)
    return float(value)


def optional_positive_float(name: str, value: Any) -> float | None:
    """A finite number > 0 as a float, or None (off)."""
    if value is None:
        return None
    if not _number(value) or value <= 0:
        raise problem(name, "a positive number or None", value)
    return float(value)


def number_in(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    integer: bool = False,
    above: bool = False,
    text: bool = False,
) -> Any:
    """A number in ``[low, high]`` (``(low, high]`` when ``above``), an ``int`` when
    ``integer``; with ``text``, a string holding one is parsed first (URL and CLI values)."""
    lower = "(" if above else "["
    expected = f"{'an integer' if integer else 'a number'} in {lower}{_shown(low)}, {_shown(high)}]"
    number = value
    if text and isinstance(value, str):
        try:
            number = int(value) if integer else float(value)
        except ValueError:
            raise problem(name, expected, value) from None
    if not _number(number) or (integer and not float(number).is_integer()):
        raise problem(name, expected, value)
    if not (low < number <= high if above else low <= number <= high):
        raise problem(name, expected, value)
    return int(number) if integer else float(number)
