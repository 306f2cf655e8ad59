from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quotagate.sizes import Allowance, format_percent, format_size, parse_allowance, parse_percent, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1234", 1234),
        ("500M", 500 * 1024**2),
        ("2G", 2 * 1024**3),
        ("1.5GiB", int(1.5 * 1024**3)),
        ("10k", 10 * 1024),
        (" 3 MB ", 3 * 1024**2),
        (42, 42),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "M", "-5", "5X", "1.2.3G", "five", "1e3"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_parse_size_rejects_negative_and_bool() -> None:
    with pytest.raises(ValueError):
        parse_size(-1)
    with pytest.raises(ValueError):
        parse_size(True)


@given(st.integers(min_value=0, max_value=2**50))
def test_format_then_parse_is_close(n: int) -> None:
    # format_size rounds to one decimal: parsing it back is within 5% (or exact below 1 KiB).
    back = parse_size(format_size(n))
    assert abs(back - n) <= max(n * 0.05, 0)


def test_percent_and_allowance() -> None:
    assert parse_percent("99%") == Decimal("0.99")
    assert parse_percent("100") == Decimal(1)
    assert parse_allowance("10%").of(1000) == 100
    assert parse_allowance("5K") == Allowance(bytes=5120)
    with pytest.raises(ValueError):
        parse_percent("-3%")
    with pytest.raises(ValueError):
        parse_percent("lots")


@given(st.decimals(min_value=0, max_value=10_000, places=3))
def test_a_percentage_written_reads_back_as_itself(percent: Decimal) -> None:
    fraction = percent / 100
    assert parse_percent(format_percent(fraction)) == fraction
    assert str(Allowance(fraction=fraction)) == (format_percent(fraction) if fraction else "0")


def test_a_percentage_is_written_without_trailing_zeros() -> None:
    assert [format_percent(Decimal(f)) for f in ("0.95", "0.950", "1", "0.025")] == ["95%", "95%", "100%", "2.5%"]
