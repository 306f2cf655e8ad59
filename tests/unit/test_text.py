"""Showing names: nothing a terminal acts on gets through, and every name can be read back."""

from __future__ import annotations

import ast
import logging
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotagate.text import OneLineFormatter, control_character, printable


def read_back(shown: str) -> str:
    """The name again, reading the shown text as the body of a Python string literal."""
    value = ast.literal_eval('"' + shown.replace('"', '\\"') + '"')
    assert isinstance(value, str)
    return value


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Sent", "Sent"),
        ("Entwürfe 日本 🙂", "Entwürfe 日本 🙂"),
        ("[bold]x", "[bold]x"),
        ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
        ("a\r\nb\tc\0", "a\\x0d\\x0ab\\x09c\\x00"),
        ("del\x7f csi\x9b", "del\\x7f csi\\x9b"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("line\u2028sep", "line\\u2028sep"),
        ("lone\udcff", "lone\\udcff"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("back\\x1b", "back\\\\x1b"),
    ],
)
def test_printable(name: str, expected: str) -> None:
    assert printable(name) == expected
    assert read_back(expected) == name


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec=None), max_size=40))
def test_any_name_is_shown_on_one_printable_line_and_reads_back(name: str) -> None:
    shown = printable(name)
    assert shown.isprintable()
    shown.encode("utf-8")  # no lone surrogate left to break the output stream
    assert read_back(shown) == name


@pytest.mark.parametrize(
    ("text", "found"),
    [("a/Maildir", None), ("a\0b", "U+0000"), ("a\nb", "U+000A"), ("\x7f", "U+007F"), ("c1\x85", "U+0085")],
)
def test_control_character(text: str, found: str | None) -> None:
    assert control_character(text) == found


def formatted(msg: str, *args: object, exc: bool = False) -> str:
    record = logging.LogRecord("quotagate.x", logging.WARNING, __file__, 1, msg, args, None)
    if exc:
        try:
            raise ValueError("bad name\nquotagate: ERROR: forged\x1b[2J")
        except ValueError:
            record.exc_info = sys.exc_info()
    return OneLineFormatter("quotagate: %(levelname)s: %(message)s").format(record)


def test_a_log_message_is_one_line() -> None:
    assert formatted("folder %s: gone", "x\nquotagate: ERROR: forged\x1b[2J") == (
        "quotagate: WARNING: folder x\\x0aquotagate: ERROR: forged\\x1b[2J: gone"
    )


def test_a_traceback_keeps_its_lines_but_none_looks_like_a_record() -> None:
    lines = formatted("failed for %s", "a\nb", exc=True).split("\n")
    assert lines[0] == "quotagate: WARNING: failed for a\\x0ab"
    assert lines[1] == "  Traceback (most recent call last):"
    assert "  ValueError: bad name" in lines
    assert "  quotagate: ERROR: forged\\x1b[2J" in lines
    assert all(line.startswith("  ") for line in lines[1:])
