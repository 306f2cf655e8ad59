"""How readings, mailboxes and scan summaries become rows of quotagate's own tables and back.

Shared by both stores of those tables (SQLAlchemy's :mod:`quotagate.store.sql` and the standard
library's :mod:`quotagate.store.sqlite`), so both write what the other reads. Free of SQLAlchemy.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any, TypeVar

import msgspec

from quotagate.model import (
    FolderUsage,
    Format,
    MailboxUsage,
    MaildirsizeInfo,
    Reading,
    ScanSummary,
    State,
)
from quotagate.store.base import Folders

T = TypeVar("T")
BATCH = 1000
# Scan summaries kept: only the last one is read (by the daemon and check); the rest is history
# for the admin. A scan a minute keeps the last 16 hours, a scan an hour six weeks.
SCANS_KEPT = 1000
# The row of quotagate_stamp that holds the change stamp (see quotagate.store.schema.stamp).
STAMP_ROW = "change"

# quotagate_usage's columns a reading is read from, in the order :func:`reading` takes them.
USAGE_COLUMNS = (
    "address",
    "path",
    "format",
    "bytes",
    "messages",
    "state",
    "reason",
    "root_stamp",
    "maildirsize_bytes",
    "maildirsize_messages",
    "maildirsize_definition",
    "maildirsize_facts",
    "measured_at",
    "folders",
)
# quotagate_scan's columns besides its id: ScanSummary's fields, in their order.
SCAN_COLUMNS = tuple(f.name for f in msgspec.structs.fields(ScanSummary))
_FORMATS = {f.value: f for f in Format}
# One encoder for every row: json.dumps with options builds a new one per call.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_STATES = {s.value: s for s in State}
# The reason column holds an unknown mailbox's error, or a measured one's warning after this.
_WARNING = "measured with a warning: "


def batches(items: Sequence[T], size: int = BATCH) -> Iterator[Sequence[T]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _folders_text(folders: Sequence[FolderUsage]) -> str:
    """``[name, bytes, messages, stamp]`` per folder, and the claims of its own maildirsize
    as a fifth element when it keeps one."""
    rows = [list(f[:4]) if f.own_maildirsize is None else [*f[:4], list(f.own_maildirsize)] for f in folders]
    return _encode(rows)


# The folders column back into FolderUsage tuples, arrays straight into named tuples: ~5x
# json.loads and a loop, and a scan or a daemon refresh decodes one per mailbox.
_folders_value = msgspec.json.Decoder(tuple[FolderUsage, ...]).decode


def _wanted_folders(text: str, which: Folders) -> tuple[FolderUsage, ...]:
    """The folders of a row a load wants (see :data:`quotagate.store.base.Folders`). A predicate
    keeps name and totals only, and one string per name: the daemon with folder limits keeps these
    for every mailbox, where every folder with its stamps took 1.5 kB a mailbox."""
    if which is False:
        return ()
    folders = _folders_value(text)
    if which is True:
        return folders
    return tuple(FolderUsage(sys.intern(f.name), f.bytes, f.messages) for f in folders if which(f.name))


def reading(row: Sequence[Any], with_folders: Folders = True) -> Reading:
    """The reading a row of :data:`USAGE_COLUMNS` holds, with the folders wanted: none (an empty
    tuple) when only totals are, which spares decoding them."""
    addr, path, fmt, b, m, state, reason, root_stamp, md_bytes, md_msgs, md_def, md_facts, measured_at, folders = row
    info = None if md_bytes is None else MaildirsizeInfo(md_bytes, md_msgs, md_def or "", **_facts(md_facts))
    parsed = _wanted_folders(folders, with_folders)
    warning = reason[len(_WARNING) :] if reason is not None and reason.startswith(_WARNING) else None
    error = None if warning is not None else reason
    usage = MailboxUsage(_FORMATS[fmt], parsed, root_stamp, error, info, warning)
    return Reading(addr, path, usage, b, m, _STATES[state], measured_at)


def _facts(text: str | None) -> dict[str, Any]:
    """The maildirsize facts column back into MaildirsizeInfo's fields; none (their defaults)
    for a row written before it, or one that does not parse."""
    try:
        lines, length, changed = (text or "").split()
        return {"size_lines": int(lines), "file_bytes": int(length), "changed_at": float(changed)}
    except ValueError:
        return {}


def _facts_text(info: MaildirsizeInfo) -> str:
    return f"{info.size_lines} {info.file_bytes} {info.changed_at!r}"


def _reason(usage: MailboxUsage) -> str | None:
    if usage.error is None and usage.warning is not None:
        return _WARNING + usage.warning
    return usage.error


def usage_row(r: Reading) -> dict[str, Any]:
    """The quotagate_usage row of ``r``, every column named."""
    info = r.usage.maildirsize
    return {
        "address": r.address,
        "path": r.path,
        "format": r.usage.format.value,
        "bytes": r.bytes,
        "messages": r.messages,
        "state": r.state.value,
        "over_quota": int(r.state is State.OVER),
        "reason": _reason(r.usage),
        "root_stamp": r.usage.root_stamp,
        "maildirsize_bytes": info.bytes if info else None,
        "maildirsize_messages": info.messages if info else None,
        "maildirsize_definition": info.definition[:200] if info else None,
        "maildirsize_facts": _facts_text(info) if info else None,
        "measured_at": r.measured_at,
        "folders": _folders_text(r.usage.folders),
    }


def scan_summary(row: Sequence[Any]) -> ScanSummary:
    """The summary a row of :data:`SCAN_COLUMNS` holds (``full`` as SQLite keeps it: 0 or 1)."""
    values = dict(zip(SCAN_COLUMNS, row, strict=True))
    values["full"] = bool(values["full"])
    return ScanSummary(**values)
