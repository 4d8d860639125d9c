"""Generated ids are 22 sortable URL-safe chars, strictly increasing; user ids are checked."""

from __future__ import annotations

import itertools
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3db_core import ids
from s3db_core.errors import ValidationError
from s3db_core.ids import ALPHABET, ID_PATTERN, new_id, validate_id


def test_alphabet_is_ascii_ordered_and_url_safe() -> None:
    assert len(ALPHABET) == len(set(ALPHABET)) == 64
    assert list(ALPHABET) == sorted(ALPHABET)
    assert all(ID_PATTERN.fullmatch(ch) for ch in ALPHABET)


def test_shape() -> None:
    value = new_id()
    assert len(value) == 22
    assert set(value) <= set(ALPHABET)
    assert validate_id(value) == value


def test_strictly_increasing_over_100k_calls() -> None:
    values = [new_id() for _ in range(100_000)]
    assert all(a < b for a, b in itertools.pairwise(values))


def test_same_millisecond_burst_increments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids.time, "time_ns", lambda: 1_700_000_000_000 * 1_000_000)
    values = [new_id() for _ in range(1000)]
    assert values == sorted(values) and len(set(values)) == 1000
    assert len({value[:8] for value in values}) == 1


def test_clock_going_backwards_keeps_order(monkeypatch: pytest.MonkeyPatch) -> None:
    before = new_id()
    monkeypatch.setattr(ids.time, "time_ns", lambda: 1_000_000 * 1_000_000)
    after = [new_id() for _ in range(10)]
    sequence = [before, *after]
    assert all(a < b for a, b in itertools.pairwise(sequence))


def test_time_prefix_orders_ids_across_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids, "_last", 0)
    monkeypatch.setattr(ids.time, "time_ns", lambda: 5_000 * 1_000_000)
    early = new_id()
    monkeypatch.setattr(ids.time, "time_ns", lambda: 5_001 * 1_000_000)
    late = new_id()
    assert early[:8] < late[:8]
    assert early < late


@given(st.integers(0, (1 << 132) - 1), st.integers(0, (1 << 132) - 1))
def test_encoding_preserves_order(a: int, b: int) -> None:
    assert (ids._encode(a) < ids._encode(b)) == (a < b)
    assert len(ids._encode(a)) == 22


def test_thread_safe_and_unique() -> None:
    results: list[list[str]] = [[] for _ in range(8)]

    def work(out: list[str]) -> None:
        out.extend(new_id() for _ in range(5000))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [value for out in results for value in out]
    assert len(set(everything)) == len(everything)
    for out in results:
        assert out == sorted(out)


@pytest.mark.parametrize("value", ["a", "user_1", "a.b~c:d@e-f", "x" * 255, new_id()])
def test_validate_id_accepts(value: str) -> None:
    assert validate_id(value) == value


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("", "length"),
        ("x" * 256, "length"),
        ("a/b", "format"),
        ("a=b", "format"),
        ("a b", "format"),
        ("é", "format"),
        ("a\n", "format"),
        (123, "type"),
        (None, "type"),
    ],
)
def test_validate_id_rejects(value: object, rule: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_id(value)
    [error] = info.value.errors
    assert (error["field"], error["rule"]) == ("id", rule)
    assert error["message"].startswith("id ")
    assert "id" in str(info.value)
