"""Maildir file and folder names: the size a delivery agent wrote into them, and how names are
stored, shown and matched."""

from __future__ import annotations

import base64
import binascii
import re

_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def ascii_lower(text: str) -> str:
    """``text`` with A-Z in lower case and nothing else, as Exim lowers a local part
    (``$local_part``, ``${lc:}``): ``ÄRGER`` is ``Ärger``, ``Straße`` stays ``straße``."""
    return text.translate(_LOWER)


def ascii_upper(text: str) -> str:
    """``text`` with a-z in capitals and nothing else (the way back of :func:`ascii_lower`)."""
    return text.translate(_UPPER)


_MAX_DIGITS = 18  # a size of 10**18 bytes is an exabyte: longer values are garbage, not sizes


def size_from_name(name: str) -> int | None:
    """The ``S=`` size in a Maildir file name (``1700000000.M1P2.host,S=1234,W=1260:2,S``).

    The value ends at ``,`` or ``:``. Only the unique part before the ``:`` info is searched, so
    flags can never be mistaken for a size. A missing, empty, non-numeric or absurdly long value
    gives ``None``: the caller then stats the file.
    """
    base = name.partition(":")[0]
    start = base.find(",S=")
    if start < 0:
        return None
    start += 3
    end = base.find(",", start)
    digits = base[start:] if end < 0 else base[start:end]
    if not digits or len(digits) > _MAX_DIGITS or not (digits.isascii() and digits.isdigit()):
        return None
    return int(digits)


def unique_part(name: str) -> str:
    """The part of a Maildir file name that stays the same when it moves from new/ to cur/."""
    return name.partition(":")[0]


def display_name(name: str) -> str:
    """A folder or file name safe to store and print: undecodable bytes become ``\\xNN`` and a
    backslash ``\\\\``, so that no two names on disk share one (folders are stored, and their
    readings reused, by this name; :func:`disk_name` turns it back)."""
    escaped = name.replace("\\", "\\\\")
    return escaped.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_ESCAPE = re.compile(r"\\(\\|x[89a-f][0-9a-f])")  # what display_name escapes: a backslash, a byte >= 0x80


def disk_name(shown: str) -> str:
    """The name on disk (undecodable bytes as surrogate escapes, as ``os`` lists them) that
    :func:`display_name` shows as ``shown``."""
    if "\\" not in shown:  # nearly every name: an unchanged scan asks for each folder's
        return shown
    return _ESCAPE.sub(lambda m: "\\" if m[1] == "\\" else chr(0xDC00 + int(m[1][1:], 16)), shown)


_SHIFTED = re.compile(r"&([A-Za-z0-9+,]*)-")


def imap_name(name: str) -> str:
    """The folder name as an IMAP server shows it: modified UTF-7 (RFC 3501), in which Dovecot
    and Courier keep names on disk, decoded (``Gel&APY-scht`` is ``Gelöscht``, ``&-`` is
    ``&``). A name that is not valid modified UTF-7 is returned as it is."""
    if "&" not in name:
        return name

    def decoded(m: re.Match[str]) -> str:
        if not m[1]:
            return "&"
        data = m[1].replace(",", "/")
        raw = base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
        return raw.decode("utf-16-be")

    try:
        return _SHIFTED.sub(decoded, name)
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return name


_UNSHIFTED = re.compile(r"[^\x20-\x7e]+")  # what modified UTF-7 writes in base64: all but printable ASCII


def imap_encoded(shown: str) -> str:
    """The name as Dovecot and Courier write it on disk, in modified UTF-7 (RFC 3501): the way
    back of :func:`imap_name` (``Gelöscht`` is ``Gel&APY-scht``, ``&`` is ``&-``)."""

    def encoded(m: re.Match[str]) -> str:
        raw = m[0].encode("utf-16-be", "surrogatepass")
        return "&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-"

    return _UNSHIFTED.sub(encoded, shown.replace("&", "&-"))


def imap_canonical(shown: str) -> bool:
    """Whether a stored folder name (see :func:`display_name`) is on disk exactly as Dovecot
    writes a name in modified UTF-7: ``Gel&APY-scht``, ``R&-D``; not ``Entwürfe`` in UTF-8,
    ``R&D``, or base64 Dovecot would write otherwise. Dovecot 2.3 lists another folder under
    its name decoded and looks it up under that name encoded again, so its quota never counts it."""
    if "&" not in shown and "\\" not in shown and shown.isascii() and shown.isprintable():
        return True  # nearly every name, at every total a scan works out: nothing to encode
    disk = disk_name(shown)
    return imap_encoded(imap_name(disk)) == disk
