"""Kubernetes resource quantities (``500m``, ``8Gi``, ``1.5``), parsed exactly.

CPU is kept in millicores and memory in bytes, both as ``int``, so quota arithmetic never
suffers from floating point drift.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_QUANTITY = re.compile(
    r"^(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
# Anything beyond this is a typo, not a facility (1 EiB of memory, 10^9 cores).
_MAX = Decimal(2**63 - 1)


class QuantityError(ValueError):
    """A value that is not a valid, non-negative Kubernetes quantity."""


def parse_quantity(value: object) -> Decimal:
    """Parse ``value`` (str, int or float) as a non-negative Kubernetes quantity."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise QuantityError(f"{value!r} is not a finite quantity")
        if value < 0:
            raise QuantityError(f"{value!r} is negative")
        text = format(Decimal(str(value)), "f")
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise QuantityError(f"expected a number or a string like '8Gi', got {type(value).__name__}")
    match = _QUANTITY.match(text) if len(text) <= 64 else None
    if match is None:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise QuantityError(f"'{shown}' is not a Kubernetes quantity (e.g. 2, 500m, 8Gi, 512Mi)")
    try:
        number = Decimal(match["num"])
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise QuantityError(f"'{text}' is not a number") from exc
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        result = number * _BINARY[suffix]
    elif suffix in _DECIMAL:
        result = number * _DECIMAL[suffix]
    else:
        exponent = int(suffix[1:])
        if abs(exponent) > 30:
            raise QuantityError(f"'{text}' is out of range")
        result = number.scaleb(exponent)
    if result > _MAX:
        raise QuantityError(f"'{text}' is out of range")
    return result


def cpu_millis(value: object) -> int:
    """CPU quantity in millicores (``"500m"`` → 500, ``2`` → 2000); must be ≥ 1m when non-zero."""
    millis = parse_quantity(value) * 1000
    if millis != millis.to_integral_value():
        raise QuantityError(f"'{value}' has a precision finer than 1m CPU")
    return int(millis)


def memory_bytes(value: object) -> int:
    """Memory quantity in bytes (``"8Gi"`` → 8589934592); fractional bytes are refused."""
    amount = parse_quantity(value)
    if amount != amount.to_integral_value():
        raise QuantityError(f"'{value}' is not a whole number of bytes")
    return int(amount)


def format_cpu(millis: int) -> str:
    """Kubernetes form of a CPU amount: whole cores when exact, else millicores."""
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_memory(nbytes: int) -> str:
    """Kubernetes form of a memory amount, using the largest exact binary suffix."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _BINARY[suffix]
        if nbytes and nbytes % unit == 0:
            return f"{nbytes // unit}{suffix}"
    return str(nbytes)


def human_cpu(millis: int) -> str:
    """CPU for people: ``2``, ``0.5``."""
    text = format(Decimal(millis) / 1000, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def human_memory(nbytes: int) -> str:
    """Memory for people: ``8Gi``, ``1.5Gi``."""
    for suffix in ("Ti", "Gi", "Mi", "Ki"):
        unit = _BINARY[suffix]
        if nbytes >= unit:
            shown = format(Decimal(nbytes) / unit, ".2f").rstrip("0").rstrip(".")
            return f"{shown}{suffix}"
    return f"{nbytes}B"
