"""Mailboxes from a CSV file with header ``address,quota[,messages[,path[,enabled]]]``."""

from __future__ import annotations

import csv
import io

from quotagate.address import BadAddress, normalize
from quotagate.model import Limits, Mailbox
from quotagate.sizes import parse_size

REQUIRED = ("address", "quota")
OPTIONAL = ("messages", "path", "enabled")
_TRUE = {"", "1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


class CsvError(ValueError):
    pass


def _enabled(value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"enabled must be yes or no, not {value!r}")


def parse_mailboxes(text: str, origin: str = "csv") -> list[Mailbox]:
    """All rows or none: every bad row is reported with its line number."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if missing or unknown:
        raise CsvError(
            f"{origin}: header must be address,quota[,messages[,path[,enabled]]]"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(unknown)}" if unknown else "")
        )
    reader.fieldnames = header
    mailboxes: dict[str, Mailbox] = {}
    problems = []
    for row in reader:
        line = reader.line_num
        if None in row:
            problems.append(f"{origin}:{line}: too many fields")
            continue
        try:
            address = normalize(row["address"] or "")
            messages = int((row.get("messages") or "0").strip() or 0)
            if messages < 0:
                raise ValueError("messages cannot be negative")
            limits = Limits(parse_size((row["quota"] or "0").strip() or "0"), messages)
            path = (row.get("path") or "").strip() or None
            mailboxes[address] = Mailbox(address, limits, _enabled(row.get("enabled") or ""), path)
        except (BadAddress, ValueError) as exc:
            problems.append(f"{origin}:{line}: {exc}")
    if problems:
        raise CsvError("\n".join(problems))
    return list(mailboxes.values())
