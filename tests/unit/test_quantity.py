from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afcore.quantity import (
    QuantityError,
    cpu_millis,
    format_cpu,
    format_memory,
    human_cpu,
    human_memory,
    memory_bytes,
)


@pytest.mark.parametrize(
    ("value", "millis"),
    [
        (2, 2000),
        ("2", 2000),
        ("500m", 500),
        (0.5, 500),
        ("1.5", 1500),
        ("1e3", 1_000_000),
        ("0", 0),
    ],
)
def test_cpu(value: object, millis: int) -> None:
    assert cpu_millis(value) == millis


@pytest.mark.parametrize(
    ("value", "nbytes"),
    [
        ("8Gi", 8 * 2**30),
        ("512Mi", 512 * 2**20),
        ("1G", 10**9),
        (1024, 1024),
        ("1.5Gi", 3 * 2**29),
        ("1k", 1000),
    ],
)
def test_memory(value: object, nbytes: int) -> None:
    assert memory_bytes(value) == nbytes


@pytest.mark.parametrize(
    "bad",
    [
        "8GG",
        "",
        "Gi",
        "-1",
        "1.2.3",
        "8 Gi",
        "1e999",
        None,
        True,
        [],
        {},
        float("nan"),
        -3,
        "1" * 100,
    ],
)
def test_bad_quantities_are_refused(bad: object) -> None:
    with pytest.raises(QuantityError):
        memory_bytes(bad)


def test_precision_limits() -> None:
    with pytest.raises(QuantityError, match="finer than 1m"):
        cpu_millis("0.0001")
    with pytest.raises(QuantityError, match="whole number of bytes"):
        memory_bytes("1.5")


def test_formatting() -> None:
    assert format_cpu(2000) == "2"
    assert format_cpu(1500) == "1500m"
    assert format_memory(8 * 2**30) == "8Gi"
    assert format_memory(1000) == "1000"
    assert human_cpu(400_000) == "400"
    assert human_cpu(500) == "0.5"
    assert human_memory(3 * 2**29) == "1.5Gi"


@given(st.integers(min_value=0, max_value=2**40))
def test_memory_round_trip(n: int) -> None:
    assert memory_bytes(format_memory(n)) == n


@given(st.integers(min_value=0, max_value=10**9))
def test_cpu_round_trip(n: int) -> None:
    assert cpu_millis(format_cpu(n)) == n


@given(st.one_of(st.text(max_size=30), st.integers(), st.floats(), st.none(), st.booleans()))
def test_parsing_never_crashes(value: object) -> None:
    try:
        result = memory_bytes(value)
    except QuantityError:
        return
    assert isinstance(result, int) and result >= 0
