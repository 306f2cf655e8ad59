"""CSV cells: one record per line, nothing for a terminal, no formula for a spreadsheet."""

from __future__ import annotations

from typing import Any

import pytest

from quotagate.report import csv_cell


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("full@example.org", "full@example.org"),
        ('=HYPERLINK("http://x","y")@example.org', '\'=HYPERLINK("http://x","y")@example.org'),
        ("+1@example.org", "'+1@example.org"),
        ("-x@example.org", "'-x@example.org"),
        ("@x@example.org", "'@x@example.org"),
        ("a\nb\x1b[2J", "a\\x0ab\\x1b[2J"),
        ("\t=1", "\\x09=1"),
        (2000, 2000),
        (12.5, 12.5),
        (None, None),
        (True, True),
    ],
)
def test_csv_cell(value: Any, cell: Any) -> None:
    assert csv_cell(value) == cell
