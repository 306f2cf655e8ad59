"""Splitting mboxes as Dovecot does: its From_ parser, Content-Length, and every chunk cut."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotagate.usage.mboxfrom import count_messages, from_line_ok, virtual_sizes

FROM = b"From sender@example.net Thu Nov 26 02:20:14 2026\n"


def count(data: bytes, chunk: int = 1 << 20) -> int:
    return count_messages(lambda offset, n: data[offset : offset + n], len(data), chunk)


# Cases from Dovecot's own test-mbox-from.c and the formats its parser comments name.
@pytest.mark.parametrize(
    "line",
    [
        b"user@domain Thu Nov 29 22:33:52 2001\n",
        b"user@domain Thu Nov  9 22:33:52 2001\n",
        b"user@domain Thu Nov 29 22:33:52 +0300 2001\n",
        b"user@domain Thu Nov 29 22:33:52 EET 2001\n",
        b"user@domain Thu Nov 29 22:33 2001\n",
        b"user@domain Thu, 9 Nov 2002 22:33:52\n",
        b'"x y z"@domain Thu Nov 29 22:33:52 2001\n',
        b"MAILER-DAEMON Fri Jul  8 12:08:34 2011\n",
        b"- Thu Nov 29 22:33:52 2001 +0300\n",
        b"user@domain thu nov 29 22:33:52 2001\n",
    ],
)
def test_from_lines_dovecot_accepts(line: bytes) -> None:
    assert from_line_ok(line)


@pytest.mark.parametrize(
    "line",
    [
        b"the start of a sentence in a body\n",
        b"me\n",
        b"user@domain\n",
        b"user@domain Thu Nov 29 2001\n",
        b"user@domain Thu Xyz 29 22:33:52 2001\n",
        b"user@domain Thu Nov 29 22:33:52\n",
        b"user@domain Thu Nov 29 2:33:52 2001\n",
        b'"unterminated\n quote Thu Nov 29 22:33:52 2001\n',
        b"",
    ],
)
def test_from_lines_dovecot_refuses(line: bytes) -> None:
    assert not from_line_ok(line)


def test_a_from_line_without_an_empty_line_before_it_ends_the_message() -> None:
    # procmail's messages without a final newline: no empty line before the next From_.
    assert count(FROM + b"Subject: a\n\nbody without final newline\n" + FROM + b"Subject: b\n\nb\n") == 2


def test_a_body_from_line_that_does_not_parse_is_body() -> None:
    data = FROM + b"Subject: a\n\nhello\n\nFrom here on, after an empty line\n"
    assert count(data) == 1


def test_content_length_skips_from_lines_in_the_body() -> None:
    body = b"line\n" + FROM + b"still the body\n"
    data = FROM + b"Content-Length: %d\n\n" % len(body) + body + b"\n" + FROM + b"\nsecond\n"
    assert count(data) == 2  # without Content-Length Dovecot would see three
    assert count(data.replace(b"Content-Length", b"X-Length")) == 3


def test_content_length_to_the_end_of_the_file() -> None:
    body = b"a\n" + FROM + b"b\n"
    assert count(FROM + b"Content-Length: %d\n\n" % len(body) + body + b"\n") == 1


@pytest.mark.parametrize("wrong", [-3, -1, 1, 5, 10**6])
def test_a_content_length_that_leads_nowhere_is_ignored(wrong: int) -> None:
    body = b"line\n" + FROM + b"x\n"
    data = FROM + b"Content-Length: %d\n\n" % (len(body) + wrong) + body + b"\n" + FROM + b"\nz\n"
    assert count(data) == 3


def test_broken_content_length_values_are_ignored() -> None:
    body = b"a\n" + FROM + b"b\n"
    for value in (b"12abc", b"-5", b"1 2"):
        data = FROM + b"Content-Length: " + value + b"\n\n" + body
        assert count(data) == 2


def test_crlf_mbox() -> None:
    data = (FROM + b"Subject: a\n\nx\n" + FROM + b"Subject: b\n\ny\n").replace(b"\n", b"\r\n")
    assert count(data) == 2


def test_not_an_mbox_and_empty() -> None:
    assert count(b"") == 0
    assert count(b"Subject: x\n\n" + FROM) == 0


def test_a_from_line_at_the_end_without_a_line_break_is_not_a_separator() -> None:
    assert count(FROM + b"\nbody\n" + FROM.rstrip(b"\n")) == 1


def test_two_from_lines_in_a_row_are_one_message() -> None:
    # The line break before the second belongs to the first From_ line, not to the message.
    assert count(FROM + FROM + b"\nbody\n") == 1


PIECES = [
    FROM,
    FROM.replace(b"\n", b"\r\n"),
    b"From me\n",
    b"From ",
    b"\n",
    b"\r\n",
    b"x\n",
    b"Subject: s\n",
    b"Content-Length: 3\n",
    b"Content-Length: 0\n",
    b"abc",
    b">From y\n",
]


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.sampled_from(PIECES), max_size=40), chunk=st.integers(min_value=1, max_value=64))
def test_chunk_size_never_changes_the_count(pieces: list[bytes], chunk: int) -> None:
    data = b"".join(pieces)
    assert count(data, chunk) == count(data)


def test_every_cut_of_a_mailbox_with_every_rule() -> None:
    body = b"line\n" + FROM + b"still the body\n"
    data = (
        FROM
        + b"Content-Length: %d\n\n" % len(body)
        + body
        + b"\n"
        + FROM
        + b"Subject: b\n\nno final newline"
        + b"\n"
        + FROM
        + b"\n\nFrom a body line\n"
    )
    expected = count(data)
    assert expected == 3
    for chunk in range(1, len(data) + 1):
        assert count(data, chunk) == expected, chunk


def vsizes(data: bytes, chunk: int = 1 << 20) -> tuple[int, int]:
    return virtual_sizes(lambda offset, n: data[offset : offset + n], len(data), chunk)


# What Dovecot 2.3.19's `doveadm mailbox status messages vsize` said of these very files.
DOVECOT_SAID = [
    (
        b"From a@b Wed Dec  2 10:16:14 2026\nSubject: one\n\nbody\n"
        b"From a@b Wed Dec  2 10:16:15 2026\nSubject: two\nX-UID: 5\nstatus: RO\n\ntwo\n",
        (2, 39),
    ),
    (b"From a@b Wed Dec  2 10:16:14 2026\nSubject: one\n\nbody", (1, 20)),
    (  # written by dovecot-lda: its own headers, Content-Length, an unescaped From_ line in the body
        b"From s@x  Wed Dec 02 10:16:20 2026\nFrom: a@b\nSubject: one\nX-IMAPbase: 1796206580 0000000002\n"
        b"X-UID: 1\nStatus: \nX-Keywords:" + b" " * 74 + b"\nContent-Length: 88\n\nbody line\n"
        b"From here on a body line\n\nFrom me@x Wed Dec  2 10:16:14 2026\nno final newline\n\n"
        b"From s@x  Wed Dec 02 10:16:20 2026\nSubject: two\nX-UID: 2\nStatus: \nX-Keywords:" + b" " * 75 + b"\n"
        b"Content-Length: 4\n\ntwo\n\n",
        (2, 141),
    ),
]


@pytest.mark.parametrize(("data", "expected"), DOVECOT_SAID)
@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_virtual_sizes_as_dovecot_counts_them(data: bytes, expected: tuple[int, int], chunk: int) -> None:
    assert vsizes(data, chunk) == expected


def test_hidden_headers_go_with_their_continuation_lines_and_crlf_counts_once() -> None:
    data = FROM + b"X-Keywords: a\n\tb\nSubject: s\r\n\r\nbody\r\n"
    # "Subject: s\r\n" 12, "\r\n" 2, "body" 4: the CRLF before the end of the file is the separator's
    assert vsizes(data) == (1, 18)
