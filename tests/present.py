"""``present(x)``: a value the test expects to be there, asserted and narrowed for mypy in one call."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def present(value: T | None) -> T:
    assert value is not None
    return value
