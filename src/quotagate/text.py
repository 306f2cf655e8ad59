"""Names are data: how folder names, file names and addresses are shown to people and logs.

Mail users choose their folder names, and a directory (LDAP, SQL) may hold any address or path.
Printed raw, a name could drive the admin's terminal (ESC sequences set the window title, clear
the screen or hide text), fake a second log record with a line break, or, given to ``rich``, be
read as markup. Everything that shows a name goes through :func:`printable` first, and log
records through :class:`OneLineFormatter`.
"""

from __future__ import annotations

import logging
import unicodedata
from types import TracebackType

_INDENT = "  "


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _visible(text: str, backslash: str) -> str:
    if text.isprintable() and "\\" not in text:  # the common case: nothing to do
        return text
    return "".join(backslash if c == "\\" else c if c.isprintable() else _escape(c) for c in text)


def printable(name: str) -> str:
    """``name`` with every character a terminal could act on written as a Python escape.

    Control characters (C0, DEL, C1: ESC, CR, LF, BEL, CSI...), and everything else
    :meth:`str.isprintable` rejects (bidi overrides, line separators, lone surrogates), become
    ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``, and a backslash becomes ``\\\\``, so the result is one
    line, reads back exactly as a Python string literal and no two names look alike. Names
    already shown with ``\\xNN`` for undecodable bytes (:func:`quotagate.usage.names.display_name`)
    therefore appear as ``\\\\xNN``, as they do in JSON.
    """
    return _visible(name, "\\\\")


def control_character(text: str) -> str | None:
    """The first control character (C0, DEL or C1) in ``text`` as ``U+XXXX``, or None.

    Import and ``mailbox add`` refuse such text: no mailbox path or address needs one, and
    a NUL would make the path unusable by every later scan.
    """
    for char in text:
        if unicodedata.category(char) == "Cc":
            return f"U+{ord(char):04X}"
    return None


class OneLineFormatter(logging.Formatter):
    """One line per log record, whatever the names in its message hold.

    The message goes through :func:`printable`, so a name with a line break cannot start a
    line that looks like another record. A traceback keeps its lines (it is for developers,
    and backslashes in its source lines stay single), but control characters in it are
    escaped and each of its lines is indented, so no line of it can pass for a record either.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        shown = logging.makeLogRecord(record.__dict__)
        shown.message = printable(record.message)
        return super().formatMessage(shown)

    def formatException(
        self, ei: tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
    ) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join(_INDENT + _visible(line, "\\") for line in text.split("\n"))
