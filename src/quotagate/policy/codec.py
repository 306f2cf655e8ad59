"""The Postfix policy-delegation protocol as pure values: bytes in, requests out, no I/O.

The protocol (Postfix SMTPD_POLICY_README) is lines ``name=value``; an empty line ends a
request and the answer is ``action=<text>`` followed by an empty line. Keeping the codec free
of sockets lets it be tested by cutting the same input at every byte, and lets the server stay a
thin loop of "read, feed, answer each item".

Three decisions shape the decoder:

* **Bounded memory.** The peer is untrusted. A pending line is kept only up to the line limit
  (plus one byte for a trailing CR); past that the line is dropped as it streams in, never
  buffered whole. Attributes of one request are capped in count and in bytes, so
  :attr:`PolicyDecoder.buffered` never exceeds :attr:`PolicyDecoder.buffer_limit`.
* **Errors are values, then resynchronisation.** A malformed or oversized request yields one
  :class:`ProtocolError` item (never an exception) when that request ends, and everything up
  to its terminating empty line is discarded. Each request therefore produces exactly one
  item, in order, so the server answers ``action=DUNNO`` for the bad one and carries on with
  the next request on the same connection (Postfix keeps connections open).
* **Exim half-close.** Exim's ``${readsocket}`` sends one request, shuts down its sending
  side and reads to end of file; it may leave out the final empty line. At end of input a
  pending request with at least one attribute is delivered (unless the caller asks not to),
  while end of input with nothing pending yields nothing.

An empty line with no attribute before it is ignored: Postfix never sends an empty request,
and answering one would put the answers out of step with the requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeAlias

MAX_LINE = 4096
"""Default longest line in bytes, not counting the LF or a CR before it."""
MAX_ATTRIBUTES = 64
"""Default most attribute lines in one request (Postfix sends about 30)."""
MAX_REQUEST = 16384
"""Default most bytes in one request, counting line ends."""
MAX_ACTION = 512
"""Most bytes of action text sent back; Postfix needs far less."""

# The largest integer a double holds exactly (9 PB, beyond any real message): the shared ledger's
# Lua numbers are doubles, and a larger size (1e+17) made its sums fail halfway through a check.
_MAX_SIZE = 2**53 - 1
_MAX_SIZE_DIGITS = len(str(_MAX_SIZE))


@dataclass(frozen=True)
class PolicyRequest:
    """One policy request: every attribute as sent, plus the few fields quotagate reads.

    Names are kept as sent and looked up exactly (Postfix sends lower case). A name sent twice
    keeps its last value, as Postfix's own attribute reader does. ``attributes`` is copied into
    a read-only mapping, so a request cannot change after it was decoded.
    """

    attributes: Mapping[str, str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))

    def __hash__(self) -> int:
        return hash(frozenset(self.attributes.items()))

    @property
    def recipient(self) -> str:
        return self.attributes.get("recipient", "")

    @property
    def size(self) -> int | None:
        """The declared message size, or None when it is unknown.

        Absent, empty, non-numeric and negative values (Exim sends -1 for "unknown") are None;
        anything past 2**53 - 1 counts as that (more than any mailbox takes: still refused where
        a limit is). "0" stays 0: the caller decides what a zero size means.
        """
        value = self.attributes.get("size", "")
        if not (value.isascii() and value.isdigit()):
            return None
        digits = value.lstrip("0") or "0"
        if len(digits) > _MAX_SIZE_DIGITS:  # also keeps int() away from huge digit strings
            return _MAX_SIZE
        return min(int(digits), _MAX_SIZE)

    @property
    def protocol_state(self) -> str:
        """The SMTP stage (``RCPT``, ``DATA``, ...), upper-cased; "" if absent."""
        return self.attributes.get("protocol_state", "").upper()

    @property
    def request(self) -> str:
        """The request type, normally ``smtpd_access_policy``; "" if absent."""
        return self.attributes.get("request", "")


@dataclass(frozen=True)
class ProtocolError:
    """A request that could not be decoded: a value, not an exception.

    The server answers it like any other request (with ``action=DUNNO``) and logs ``reason``,
    which describes the first problem found and never echoes more than a short excerpt of the
    offending bytes.
    """

    reason: str


PolicyItem: TypeAlias = PolicyRequest | ProtocolError


def _excerpt(line: bytes) -> str:
    return repr(line[:32]) + ("..." if len(line) > 32 else "")


class PolicyDecoder:
    """Turns a byte stream, fed in pieces of any size, into one item per request.

    Call :meth:`feed` with whatever the socket returned and :meth:`end` at end of input. Neither
    raises on any input. After :meth:`end` the decoder is empty again and may be reused.
    """

    def __init__(
        self,
        max_line: int = MAX_LINE,
        max_attributes: int = MAX_ATTRIBUTES,
        max_request: int = MAX_REQUEST,
    ) -> None:
        for name, value in (("max_line", max_line), ("max_attributes", max_attributes), ("max_request", max_request)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        self._max_line = max_line
        self._max_attributes = max_attributes
        self._max_request = max_request
        self._line = bytearray()  # the pending line, at most max_line + 1 bytes
        self._overflow = False  # the pending line went past the limit; drop it up to its LF
        self._attributes: dict[str, str] = {}
        self._count = 0  # attribute lines in the current request
        self._bytes = 0  # bytes of those lines, line ends included
        self._error: str | None = None  # set: the current request is bad, skip to its empty line

    @property
    def buffer_limit(self) -> int:
        """The most bytes :attr:`buffered` can ever reach with these limits."""
        return self._max_line + 1 + self._max_request

    @property
    def buffered(self) -> int:
        """Bytes held for the current request: its pending line and its accepted attribute lines."""
        return len(self._line) + self._bytes

    @property
    def pending(self) -> bool:
        """Whether part of a request (a line or an attribute) has been read but not yet delivered."""
        return bool(self._line) or self._overflow or self._count > 0 or self._error is not None

    def feed(self, data: bytes) -> list[PolicyItem]:
        """Decode what ``data`` completes; the rest waits for the next call."""
        items: list[PolicyItem] = []
        pos, size = 0, len(data)
        # Once the fast path declines a request, the rest of this piece goes line by line: each
        # try looks ahead for the request's end, and trying again at every request of a piece it
        # declines (lines ending in CRLF, say) would cost the square of the piece's size.
        fast = True
        while pos < size:
            if fast and not (self._line or self._overflow or self._count or self._error):
                bulk = self._bulk(data, pos)
                if bulk is None:
                    fast = False
                else:
                    request, pos = bulk
                    if request is not None:
                        items.append(request)
                    continue
            newline = data.find(b"\n", pos)
            if newline < 0:
                self._take(data, pos, size)
                break
            if self._line or self._overflow:
                self._take(data, pos, newline)
                item = self._line_done()
            elif newline - pos > self._max_line + 1:
                self._fail(f"line longer than {self._max_line} bytes")
                item = None
            else:  # the common case: the whole line is in this piece, no copy into the buffer
                item = self._complete(data[pos:newline])
            if item is not None:
                items.append(item)
            pos = newline + 1
        return items

    def _bulk(self, data: bytes, pos: int) -> tuple[PolicyRequest | None, int] | None:
        """The common case at a request's start: whole lines, plainly fine, taken in a few calls
        instead of one at a time (half the work of a check went to decoding line by line). The
        request when its empty line is in ``data`` (else its lines wait, as line by line, for the
        rest or for :meth:`end`: Exim half-closes instead), and where decoding goes on. None for
        anything else (a partial line, a CR, a NUL, a limit, a bad line): the line-by-line path
        then handles it and reports exactly as it always did."""
        end = data.find(b"\n\n", pos)
        ended = end >= 0
        if not ended:
            if not data.endswith(b"\n"):
                return None
            end = len(data) - 1
        if end <= pos or end - pos >= self._max_request:  # bytes: each line and its LF
            return None
        block = data[pos:end]
        if b"\r" in block or b"\0" in block or block.startswith(b"=") or b"\n=" in block:
            return None
        lines = block.split(b"\n")
        if len(lines) > self._max_attributes or (len(block) > self._max_line and max(map(len, lines)) > self._max_line):
            return None
        try:
            attributes = dict(line.split("=", 1) for line in block.decode("utf-8", "backslashreplace").split("\n"))
        except ValueError:  # a line without "="
            return None
        if ended:
            return PolicyRequest(attributes), end + 2
        self._attributes, self._count, self._bytes = attributes, len(lines), len(block) + 1
        return None, len(data)

    def end(self, *, deliver_partial: bool = True) -> list[PolicyItem]:
        """Finish at end of input and reset the decoder.

        With ``deliver_partial`` (Exim's half-close), a last line without its LF counts as a
        line, and a request without its empty line is delivered as if it had one: as a
        request, or as a :class:`ProtocolError` if it was bad. Without it, anything unfinished
        is dropped, since a peer that went away mid-request cannot read an answer.
        """
        items: list[PolicyItem] = []
        if deliver_partial:
            if self._line or self._overflow:
                item = self._line_done()
                if item is not None:
                    items.append(item)
            item = self._request_done()
            if item is not None:
                items.append(item)
        self._line.clear()
        self._overflow = False
        self._reset_request()
        return items

    def _take(self, data: bytes, start: int, stop: int) -> None:
        """Append ``data[start:stop]`` (no LF in it) to the pending line, never past the limit."""
        if self._overflow:
            return
        if stop - start > self._max_line + 1 - len(self._line):
            self._overflow = True
            self._line.clear()
            self._fail(f"line longer than {self._max_line} bytes")
            return
        self._line += data[start:stop]

    def _line_done(self) -> PolicyItem | None:
        """Handle the pending line, now complete; its LF has been consumed."""
        if self._overflow:  # already recorded as an error, and never an empty line
            self._overflow = False
            return None
        line = bytes(self._line)
        self._line.clear()
        return self._complete(line)

    def _complete(self, line: bytes) -> PolicyItem | None:
        """One whole line, without its LF: an attribute, or the empty line that ends a request."""
        length = len(line) + 1
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            return self._request_done()
        if self._error is None:
            self._attribute(line, length)
        return None

    def _attribute(self, line: bytes, length: int) -> None:
        if len(line) > self._max_line:
            self._fail(f"line longer than {self._max_line} bytes")
            return
        if self._count + 1 > self._max_attributes:
            self._fail(f"more than {self._max_attributes} attributes")
            return
        if self._bytes + length > self._max_request:
            self._fail(f"request longer than {self._max_request} bytes")
            return
        raw_name, equals, raw_value = line.partition(b"=")
        if not equals:
            self._fail(f"line without '=': {_excerpt(line)}")
            return
        if not raw_name:
            self._fail(f"empty attribute name: {_excerpt(line)}")
            return
        if b"\0" in line:
            self._fail(f"NUL byte in line: {_excerpt(line)}")
            return
        # Not UTF-8 (a client's HELO or sender as sent, which Postfix passes on unless
        # strict_smtputf8): each such byte as \xNN. Refused, the whole request would be DUNNO,
        # and any client could skip the check with one such byte; one U+FFFD for every such
        # byte would make roomy+\xfe@ and roomy+\xff@, two copies, one.
        self._attributes[raw_name.decode("utf-8", "backslashreplace")] = raw_value.decode("utf-8", "backslashreplace")
        self._count += 1
        self._bytes += length

    def _request_done(self) -> PolicyItem | None:
        """The current request ended: its item (the request or its error), or None if it was empty."""
        item: PolicyItem | None = None
        if self._error is not None:
            item = ProtocolError(self._error)
        elif self._count:
            item = PolicyRequest(self._attributes)
        self._reset_request()
        return item

    def _fail(self, reason: str) -> None:
        """Mark the current request bad (the first reason wins) and let go of what it held."""
        if self._error is None:
            self._error = reason
        self._attributes = {}
        self._count = 0
        self._bytes = 0

    def _reset_request(self) -> None:
        self._attributes = {}
        self._count = 0
        self._bytes = 0
        self._error = None


def encode_action(action: str) -> bytes:
    """The answer to one request: ``action=<text>`` and the empty line that ends it.

    CR, LF and NUL in ``action`` become spaces, so a reason taken from data (an address, a
    store error) can never end the answer early or inject a second one. The text is cut to
    :data:`MAX_ACTION` bytes without splitting a UTF-8 character.
    """
    text = action.replace("\r", " ").replace("\n", " ").replace("\0", " ")
    encoded = text.encode("utf-8", "replace")
    if len(encoded) > MAX_ACTION:
        encoded = encoded[:MAX_ACTION].decode("utf-8", "ignore").encode("utf-8")
    return b"action=" + encoded + b"\n\n"
