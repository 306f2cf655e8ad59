"""Human sizes ("500M", "1.5GiB", "10%") to numbers and back."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1024,
    "KB": 1024,
    "KIB": 1024,
    "M": 1024**2,
    "MB": 1024**2,
    "MIB": 1024**2,
    "G": 1024**3,
    "GB": 1024**3,
    "GIB": 1024**3,
    "T": 1024**4,
    "TB": 1024**4,
    "TIB": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
MAX_COUNT = 2**63 - 1
"""The largest limit (bytes or messages) a store keeps: what a BIGINT column holds."""


def parse_size(value: str | int) -> int:
    """Bytes from ``500M``, ``2G``, ``1.5GiB`` or plain bytes.

    Units are binary (``1K`` = 1024), as in Maildir++ tools and Exim's ``quota =``.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value}")
        return checked_count(value)
    match = _SIZE.match(str(value))
    if not match or match.group(2).upper() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (use e.g. 500M, 2G, 1.5GiB or plain bytes)")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"not a size: {value!r}") from exc
    return checked_count(int(number * _UNITS[match.group(2).upper()]))


def checked_count(value: int) -> int:
    """``value``, unless it is more than a store keeps (:data:`MAX_COUNT`): a ValueError."""
    if value > MAX_COUNT:
        raise ValueError(f"{value} is more than the largest limit quotagate keeps ({MAX_COUNT})")
    return value


def format_size(n: int) -> str:
    """A short human form: ``1.5G``, ``512K``, ``42B``."""
    if n < 1024:
        return f"{n}B"
    for unit in ("K", "M", "G", "T"):
        n_float = n / 1024
        if n_float < 1024 or unit == "T":
            text = f"{n_float:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
        n = int(n_float)
    raise AssertionError("unreachable")  # pragma: no cover


class Allowance:
    """An amount that is either absolute bytes or a fraction of the limit (``"10%"``).

    A plain value class rather than a dataclass: the config decoder reads a dataclass from a
    TOML table, where quotagate.toml writes ``"10%"`` or ``"5M"`` (see :mod:`quotagate.config`).
    """

    __slots__ = ("bytes", "fraction")

    def __init__(self, bytes: int = 0, fraction: Decimal = Decimal(0)) -> None:
        self.bytes = bytes
        self.fraction = fraction

    def of(self, limit: int) -> int:
        """The allowance in bytes for a limit of ``limit`` bytes."""
        return self.bytes + int(self.fraction * limit)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Allowance):
            return NotImplemented
        return (self.bytes, self.fraction) == (other.bytes, other.fraction)

    def __hash__(self) -> int:
        return hash((self.bytes, self.fraction))

    def __repr__(self) -> str:
        return f"Allowance(bytes={self.bytes!r}, fraction={self.fraction!r})"

    def __str__(self) -> str:
        if self.fraction:
            return format_percent(self.fraction)
        return str(self.bytes)


def parse_allowance(value: str | int) -> Allowance:
    """``"10%"`` (of the limit) or a size such as ``"5M"``."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return Allowance(fraction=parse_percent(value))
    return Allowance(bytes=parse_size(value))


def format_percent(fraction: Decimal) -> str:
    """A fraction as a percentage, written as :func:`parse_percent` reads it: ``95%``, ``2.5%``."""
    return f"{(fraction * 100).normalize():f}%"


def parse_percent(value: str | int | float) -> Decimal:
    """A fraction from ``"99%"``, ``"99.5%"``; a bare number is taken as percent too."""
    text = str(value).strip().removesuffix("%").strip()
    try:
        number = Decimal(text)
    except InvalidOperation as exc:
        raise ValueError(f"not a percentage: {value!r} (use e.g. 99%)") from exc
    if not number.is_finite() or number < 0:
        raise ValueError(f"not a percentage: {value!r} (use e.g. 99%)")
    return number / 100
