"""Where an mbox message ends, as Dovecot 2.3 decides it: pure logic, the reads injected.

Dovecot (``istream-raw-mbox.c``) ends a message at any line starting ``From `` whose rest its
``mbox_from_parse`` (``mbox-from.c``) accepts as a sender and a date, with or without an empty
line before it; a ``From `` line that does not parse is body text. When the headers carry a
``Content-Length`` and the byte after that many bytes of body is the line break before such a
line (or the file's final line break), the message ends there, whatever ``From `` lines the body
holds. quotagate follows both rules so that it counts what Dovecot counts (issue 12).

Differences kept on purpose, all in mboxes Dovecot itself would call broken: a ``From_`` line
is judged from at most :data:`LINE_WINDOW` bytes; a ``From `` line inside the headers ends the
message without looking at ``Content-Length``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

LINE_WINDOW = 8192  # bytes of a From_ line (and what follows it) the parser is shown
_LOOKAHEAD = 64  # Dovecot's parser may look past the line break; it never reads further than this
_HEAD = 256  # bytes of a header line looked at: enough for any real Content-Length
_CR, _LF, _SP = 13, 10, 32
_MONTHS = (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec")
_LWSP = frozenset(b" \t\r\n")

Read = Callable[[int, int], bytes]


def _digit(c: int) -> bool:
    return 48 <= c <= 57


def _month(at: Callable[[int], int], i: int) -> bool:
    word = bytes(at(i + k) for k in range(3))
    return (word.lower() in _MONTHS or word == b"???") and at(i + 3) == _SP


def _year(at: Callable[[int], int], i: int) -> bool:
    return all(_digit(at(i + k)) for k in range(4))


def from_line_ok(data: bytes) -> bool:
    """Whether Dovecot's ``mbox_from_parse`` accepts ``data`` (what follows ``From `` on the
    line, and after it whatever the stream holds): a sender, then an asctime()-like date.

    A line for line port of the checks that decide acceptance; a byte past the end reads as
    NUL, which no check accepts.
    """
    n = len(data)

    def at(k: int) -> int:
        return data[k] if k < n else 0

    i = 0
    if n and data[0] == ord('"'):  # "x y z"@domain: skip the quoted part
        esc = False
        i = 1
        while i < n and (data[i] != ord('"') or esc):
            if data[i] in (_CR, _LF):
                return False
            esc = data[i] == ord("\\")
            i += 1
        i += 1
    while i < n and data[i] != _SP:
        if data[i] in (_CR, _LF):
            return False
        i += 1
    while i < n and data[i] == _SP:
        i += 1
    if i + 29 - 3 - 5 > n:
        return False
    i += 4  # weekday, not checked
    alt = not _month(at, i)
    if alt:  # "Thu, 9 Nov 2002 22:33:52"
        i += 1
        if not _digit(at(i)):
            return False
        i += 1
        if _digit(at(i)):
            i += 1
        if at(i) != _SP:
            return False
        i += 1
        if not _month(at, i):
            return False
        i += 4
        if not _year(at, i):
            return False
        i += 5
    else:
        i += 4
        if at(i) == _SP:
            i += 1
        if at(i + 1) == _SP:
            if not _digit(at(i)):
                return False
            i += 2
        else:
            if not (_digit(at(i)) and _digit(at(i + 1)) and at(i + 2) == _SP):
                return False
            i += 3
    if i + 5 > n or not (_digit(at(i)) and _digit(at(i + 1)) and at(i + 2) == ord(":")):
        return False
    i += 3
    if not (_digit(at(i)) and _digit(at(i + 1))):
        return False
    i += 2
    if i >= n:
        pass
    elif at(i) == ord(":"):
        if i + 3 > n:
            return False
        i += 1
        if not (_digit(at(i)) and _digit(at(i + 1))):
            return False
        i += 2
        if not alt:
            if at(i) != _SP:
                return False
            i += 1
    elif not alt:
        if at(i) != _SP:
            return False
        i += 1
    if alt:
        return True
    if i + 4 <= n and not _year(at, i):  # a named timezone before the year
        while i < n and data[i] != _SP:
            if data[i] in (_CR, _LF):
                return False
            i += 1
        if i + 5 > n:
            return False
        i += 1
    elif i + 6 <= n and at(i) in b"+-" and all(_digit(at(i + k)) for k in range(1, 5)) and at(i + 5) == _SP:
        i += 6
    return i + 4 <= n and _year(at, i)


class _Window:
    """Reads of a file through ``read(offset, n)``, ``chunk`` bytes at a time, cached."""

    def __init__(self, read: Read, size: int, chunk: int) -> None:
        self._read = read
        self.size = size
        self._chunk = max(chunk, 1)
        self._start = 0
        self._buf = b""

    def _load(self, start: int) -> None:
        self._start = start
        self._buf = self._read(start, self._chunk)
        if not self._buf:  # shrank while read: its end is here
            self.size = min(self.size, start)

    def get(self, start: int, n: int) -> bytes:
        out = bytearray()
        while n > 0 and start < self.size:
            if not self._start <= start < self._start + len(self._buf):
                self._load(start)
                if not self._buf:
                    break
            piece = self._buf[start - self._start : start - self._start + n]
            out += piece
            start += len(piece)
            n -= len(piece)
        return bytes(out)

    def line_end(self, start: int, most: int | None = None) -> int:
        """The offset just after the line break ending the line at ``start``, or the file's end;
        with ``most``, looked for in at most that many bytes (else ``start + most``)."""
        limit = self.size if most is None else min(self.size, start + most)
        while start < limit:
            if not self._start <= start < self._start + len(self._buf):
                self._load(start)
                if not self._buf:
                    break
            found = self._buf.find(b"\n", start - self._start, limit - self._start)
            if found >= 0:
                return self._start + found + 1
            start = self._start + len(self._buf)
        return limit


def _content_length(w: _Window, p: int, end: int) -> int | None:
    """The value of a ``Content-Length`` header line at ``p`` (continuation lines included), as
    Dovecot's ``parse_content_length`` reads it; None for any other line or a broken value."""
    head = w.get(p, min(end - p, _HEAD))
    name, colon, value = head.partition(b":")
    if not colon or name.rstrip(b" \t").lower() != b"content-length" or end - p > _HEAD:
        return None
    value = value.lstrip(b" \t")
    digits = len(value) - len(value.lstrip(b"0123456789"))
    if any(c not in _LWSP for c in value[digits:]):
        return None
    q = end
    while q < w.size and w.get(q, 1) in (b" ", b"\t"):  # folded: the rest must be white space
        nxt = w.line_end(q)
        if nxt - q > _HEAD or any(c not in _LWSP for c in w.get(q, nxt - q)):
            return None
        q = nxt
    return int(value[:digits]) if digits else 0


def _separator(w: _Window, p: int, end: int) -> bool:
    """Whether the line at ``p`` (ending at ``end``) ends the message before it: ``From `` and a
    From_ line Dovecot accepts, ended by a line break (Dovecot waits for one)."""
    if w.get(p, 5) != b"From " or w.get(end - 1, 1) != b"\n":
        return False
    return from_line_ok(w.get(p + 5, min(end - p - 5 + _LOOKAHEAD, LINE_WINDOW)))


def _valid_at(w: _Window, t: int) -> int | None:
    """Dovecot's check of a Content-Length: at ``t`` the file ends in its last line break, or a
    line break and an accepted From_ line follow. The From_ line's offset (or the size), else None."""
    tail = w.get(t, 2)
    if (w.size - t == 1 and tail[:1] == b"\n") or (w.size - t == 2 and tail == b"\r\n"):
        return w.size
    skip = 1 if tail[:1] == b"\n" else 2 if tail == b"\r\n" else 0
    if not skip or w.size - t <= 30 + skip or w.get(t + skip, 5) != b"From ":
        return None
    start = t + skip + 5
    # Only as far as it is looked at: each message's Content-Length may point at one long line.
    end = w.line_end(start, LINE_WINDOW)
    return t + skip if from_line_ok(w.get(start, min(end - start + _LOOKAHEAD, LINE_WINDOW))) else None


def count_messages(read: Read, size: int, chunk: int = 1 << 20) -> int:
    """Messages in the mbox of ``size`` bytes that ``read(offset, n)`` returns, as Dovecot splits
    them. A file not starting with ``From `` holds none (Dovecot refuses it as an mbox)."""
    return sum(1 for _ in _messages(_Window(read, size, chunk)))


def virtual_sizes(read: Read, size: int, chunk: int = 1 << 20) -> tuple[int, int]:
    """Messages and the sum of their virtual sizes, as Dovecot's ``count`` quota (with
    ``quota_vsizes``) has them: the message without its ``From_`` line, without the headers
    Dovecot keeps its own state in (:data:`HIDDEN_HEADERS`), and without the line break that
    separates it from the next ``From_`` line or ends the file; every bare LF counted as CRLF."""
    w = _Window(read, size, chunk)
    messages = total = 0
    for hdr, body, end in _messages(w):
        messages += 1
        if w.get(end - 1, 1) == b"\n" and end > hdr:
            end -= 2 if end - 2 >= hdr and w.get(end - 2, 1) == b"\r" else 1
        total += _header_vsize(w, hdr, min(body, end)) + _vsize(w, min(body, end), end)
    return messages, total


# The headers Dovecot keeps an mbox's state in: not part of the message it shows or counts.
HIDDEN_HEADERS = frozenset(
    (b"content-length", b"status", b"x-imap", b"x-imapbase", b"x-keywords", b"x-status", b"x-uid")
)


def _vsize(w: _Window, start: int, end: int) -> int:
    """Bytes ``start`` to ``end`` with every bare LF counted as CRLF, read a window at a time."""
    total = 0
    last = b""
    while start < end:
        piece = w.get(start, min(end - start, 1 << 16))
        if not piece:
            break
        total += len(piece) + piece.count(b"\n") - piece.count(b"\r\n") - (last == b"\r" and piece[:1] == b"\n")
        last = piece[-1:]
        start += len(piece)
    return total


def _header_vsize(w: _Window, start: int, end: int) -> int:
    """:func:`_vsize` of the header lines ``start`` to ``end``, less the hidden ones (with
    their continuation lines)."""
    total = 0
    hidden = False
    p = start
    while p < end:
        line_end = min(w.line_end(p), end)
        head = w.get(p, min(line_end - p, _HEAD))
        if head[:1] not in (b" ", b"\t"):
            hidden = head.partition(b":")[0].rstrip(b" \t").lower() in HIDDEN_HEADERS
        if not hidden:
            total += _vsize(w, p, line_end)
        p = line_end
    return total


def _messages(w: _Window) -> Iterator[tuple[int, int, int]]:
    """Each message as Dovecot splits the file: where its headers start (after the ``From_``
    line), where its body starts (the end, for headers without an empty line after them) and
    where it ends (the next ``From_`` line, or the file's end). Not the pseudo message at the
    top of a folder (see :func:`_pseudo`), which Dovecot hides."""
    if w.get(0, 5) != b"From ":
        return
    start: int | None = 0
    first = True
    while start is not None and start < w.size:
        hdr = w.line_end(start)
        start, body = _next_message(w, hdr)
        end = w.size if start is None else start
        if not (first and _pseudo(w, hdr, end if body is None else body)):
            yield hdr, end if body is None else body, end
        first = False


def _pseudo(w: _Window, start: int, end: int) -> bool:
    """Whether the headers ``start`` to ``end`` of a folder's first message hold ``X-IMAP:``:
    c-client's (and Dovecot's) "DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA", which keeps
    a folder's UIDVALIDITY once its mail is gone. Not ``X-IMAPbase:``, which a real message
    carries for the same purpose."""
    p = start
    while p < end:
        line_end = min(w.line_end(p), end)
        if w.get(p, min(line_end - p, _HEAD)).partition(b":")[0].rstrip(b" \t").lower() == b"x-imap":
            return True
        p = line_end
    return False


def _next_message(w: _Window, hdr: int) -> tuple[int | None, int | None]:
    """Where the message whose headers start at ``hdr`` ends (the next From_ line, or None at
    the file's end), and where its body starts (None when its headers never end)."""
    p = hdr
    length: int | None = None
    body: int | None = None
    while p < w.size:
        end = w.line_end(p)
        if p > hdr and _separator(w, p, end):
            return p, None  # a From_ line in the headers: the headers had no end
        if end - p <= 2 and w.get(p, end - p) in (b"\n", b"\r\n"):
            body = end
            break
        if length is None:
            length = _content_length(w, p, end)
        p = end
    if body is None:
        return None, None
    if length is not None and (nxt := _valid_at(w, body + length)) is not None:
        return (nxt if nxt < w.size else None), body
    p = body
    while p < w.size:
        end = w.line_end(p)
        if _separator(w, p, end):
            return p, body
        p = end
    return None, body
