"""Dovecot-profile mbox splitting (``quotagate.usage.mboxfrom``): what a crafted Content-Length
costs. Bytes read are counted, not timed."""

from __future__ import annotations

import pytest

from quotagate.usage import mboxfrom

FROM = b"From a@b.example Thu Nov 26 02:20:14 2026\n"
N = 2000


class Budget(Exception):
    pass


def _counting(data: bytes, budget: int | None = None) -> tuple[mboxfrom.Read, list[int]]:
    total = [0]

    def read(offset: int, n: int) -> bytes:
        piece = data[offset : offset + n]
        total[0] += len(piece)
        if budget is not None and total[0] > budget:
            raise Budget(f"read {total[0]} bytes of a {len(data)}-byte mbox")
        return piece

    return read, total


def _mbox(tail_line: int, content_length: bool) -> bytes:
    """N short messages, then a ``From `` line of ``tail_line`` bytes Dovecot does not accept
    (no line break, no date). With ``content_length`` every message carries a Content-Length
    that leads exactly to the line break before that line (so Dovecot's check looks at it and
    rejects it); without, the same header under another name: a plain mailbox of the same size."""
    size_of = len(FROM + b"Content-Length: 0000000000\n\n" + b"x\n\n")
    target = N * size_of - 1  # the last message's final "\n", before "From zzz..."
    out = bytearray()
    for i in range(N):
        body = i * size_of + size_of - 3
        name = b"Content-Length" if content_length else b"X-Length-Here!"
        out += FROM + name + b": %010d\n\n" % (target - body) + b"x\n\n"
    out += b"From " + b"z" * tail_line
    return bytes(out)


def test_content_lengths_pointing_at_one_long_line_are_not_quadratic() -> None:
    """Scenario: a user's mbox (Dovecot profile) holds 2,000 tiny messages, each with a
    Content-Length that leads to the line break before one long (4 MB) "From zzz..." line at the
    end, which Dovecot's From_ parser refuses. The file is ~4.1 MB.
    Expected: splitting it reads about as many bytes as a plain mailbox of the same size (here:
    at most 20x as many).
    Before the fix: the From_ line's end was looked for over the whole long line once per
    message, so bytes read grew as messages x line length: ~8 GB for a 4 MB file; a real 21 MB
    file took 47 s against 0.36 s (130x), and ~100 MB of it always ran into mailbox_timeout."""
    plain = _mbox(4 << 20, content_length=False)
    read, plain_total = _counting(plain)
    assert mboxfrom.count_messages(read, len(plain)) == N

    crafted = _mbox(4 << 20, content_length=True)
    assert len(crafted) == len(plain)
    budget = 20 * plain_total[0]
    read, _ = _counting(crafted, budget)
    try:
        messages = mboxfrom.count_messages(read, len(crafted))
    except Budget as exc:
        pytest.fail(f"more than 20x the bytes of a plain mailbox of the same size: {exc}")
    assert messages == N
