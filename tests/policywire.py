"""Policy-protocol bytes for property tests: cutting a stream, and a model of its framing.

Shared by the codec's own tests and by the codec-plus-service properties, so both count
requests the same independent way.
"""

from __future__ import annotations

from itertools import pairwise

from hypothesis import strategies as st


def cut(data: bytes, positions: list[int]) -> list[bytes]:
    """``data`` cut at ``positions`` (taken modulo its length), as a socket might deliver it."""
    points = sorted({p % (len(data) + 1) for p in positions})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


def count_requests(data: bytes) -> tuple[int, bool]:
    """A model of the framing: (requests ended by an empty line, whether one is left at the end)."""
    *complete, last = data.split(b"\n")
    ended, pending = 0, False
    for line in complete:
        if line.removesuffix(b"\r"):
            pending = True
        elif pending:
            ended, pending = ended + 1, False
    return ended, pending or bool(last.removesuffix(b"\r"))


noise = st.lists(
    st.sampled_from([b"\n", b"\r\n", b"=", b"a", b"b=c\n", b"\r", b"\x00", b"\xff", b"\xc3", b"\xc3\xa9", b"xxxxxxxx"])
    | st.binary(max_size=20),
    max_size=60,
).map(b"".join)
"""Byte soup biased towards the protocol's own separators and broken UTF-8."""
