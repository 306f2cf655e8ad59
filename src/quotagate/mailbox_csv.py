"""Mailboxes from a CSV file with header ``address,quota[,messages[,path[,enabled]]]``."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass

from msgspec.structs import replace

from quotagate.address import BadAddress, normalize
from quotagate.model import Limits, Mailbox
from quotagate.sizes import checked_count, parse_size
from quotagate.text import control_character, printable

REQUIRED = ("address", "quota")
OPTIONAL = ("messages", "path", "enabled")
_TRUE = {"", "1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}
_BOM = b"\xef\xbb\xbf"


class CsvError(ValueError):
    pass


@dataclass(frozen=True)
class CsvMailboxes:
    """The rows of a file, and which of the optional columns its header names."""

    mailboxes: list[Mailbox]
    columns: frozenset[str]

    def over(self, stored: Mapping[str, Mailbox]) -> list[Mailbox]:
        """Each row laid over the stored mailbox of its address: a column the file does not
        have keeps what is stored (a file of quotas alone neither enables a disabled mailbox
        nor drops its path or message limit), as ``mailbox add`` changes only what is given.
        An empty cell of a column the file has is that column's default, as for a new mailbox."""
        merged = []
        for row in self.mailboxes:
            old = stored.get(row.address)
            if old is not None:
                messages = row.limits.messages if "messages" in self.columns else old.limits.messages
                row = replace(
                    row,
                    limits=Limits(row.limits.bytes, messages),
                    enabled=row.enabled if "enabled" in self.columns else old.enabled,
                    path=row.path if "path" in self.columns else old.path,
                )
            merged.append(row)
        return merged


def _enabled(value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"enabled must be yes or no, not {value!r}")


def _text(data: bytes, origin: str) -> str:
    """``data`` as text, less a UTF-8 BOM, after checking it line by line.

    Lines are counted as an editor counts them, at each LF. A line that is not UTF-8, or holds
    a control character other than the CR of a CRLF ending (a NUL, an ESC, a lone CR that the
    CSV reader would take for a line end), is reported by number, all of them at once. A UTF-8
    character never holds an LF byte, so decoding line by line finds exactly the bad lines.
    """
    data = data.removeprefix(_BOM)
    bad = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            bad.append(f"{origin}:{number}: not UTF-8")
            continue
        found = control_character(line)
        if found is not None:
            bad.append(f"{origin}:{number}: control character {found}")
    if bad:
        raise CsvError("\n".join(bad))
    return data.decode("utf-8")


def _control(row: dict[str, str]) -> str | None:
    """Why ``row`` is refused for a control character in a field (a quoted line break), or None."""
    for field, value in row.items():
        found = control_character(value or "")
        if found is not None:
            return f"{field} holds a control character ({found})"
    return None


def parse_mailboxes(data: bytes, origin: str = "csv") -> CsvMailboxes:
    """All rows or none: every bad row is reported with its line number, and so is an address
    given again (which of its rows was meant cannot be known).

    The file must be UTF-8 (a BOM is accepted) and no field may hold a control character: a
    NUL in a path would break every later scan, and nothing in a mailbox's address or path
    needs one. Errors never echo a control character back.
    """
    reader = csv.DictReader(io.StringIO(_text(data, origin), newline=""))
    try:
        fieldnames = reader.fieldnames
    except csv.Error as exc:
        raise CsvError(f"{origin}:{reader.reader.line_num}: {exc}") from None
    header = [h.strip().lower() for h in (fieldnames or [])]
    missing = [c for c in REQUIRED if c not in header]
    unknown = [printable(c) for c in header if c not in REQUIRED + OPTIONAL]
    if missing or unknown:
        raise CsvError(
            f"{origin}: header must be address,quota[,messages[,path[,enabled]]]"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(unknown)}" if unknown else "")
        )
    reader.fieldnames = header
    mailboxes: list[Mailbox] = []
    lines: dict[str, int] = {}  # address -> the line that gave it
    problems = []
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:  # the reader cannot go on: report it with what was found so far
            problems.append(f"{origin}:{reader.reader.line_num}: {exc}")
            break
        line = reader.line_num
        if None in row:
            problems.append(f"{origin}:{line}: too many fields")
            continue
        control = _control(row)
        if control is not None:
            problems.append(f"{origin}:{line}: {control}")
            continue
        try:
            address = normalize(row["address"] or "")
            if address in lines:
                raise ValueError(f"{printable(address)} is on line {lines[address]} already")
            quota = (row["quota"] or "").strip()
            if not quota:
                raise ValueError("quota is empty (0 is unlimited)")
            messages = checked_count(int((row.get("messages") or "0").strip() or 0))
            if messages < 0:
                raise ValueError("messages cannot be negative")
            limits = Limits(parse_size(quota), messages)
            path = (row.get("path") or "").strip() or None
            mailboxes.append(Mailbox(address, limits, _enabled(row.get("enabled") or ""), path))
            lines[address] = line
        except (BadAddress, ValueError) as exc:
            problems.append(f"{origin}:{line}: {exc}")
    if problems:
        raise CsvError("\n".join(problems))
    return CsvMailboxes(mailboxes, frozenset(c for c in OPTIONAL if c in header))
