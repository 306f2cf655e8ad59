"""Reservations kept across restarts: a small JSON file the daemon rewrites when they changed.

Written atomically (temp file and rename, mode 0600) off the event loop, at most every few
seconds and once more on shutdown, and read once at start: a daemon restarted between a burst's
RCPTs and its DATA still holds the room it promised. A file that cannot be read is logged and
ignored: a restart then forgets reservations, as before they were kept, but never fails.

The file may lie in a directory another user owns (beside an SQLite file the admin's own tools
write): it is read and written through a descriptor of its directory, never through a symlink,
and read only when it is a regular file (a FIFO there must not block the daemon's start).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import msgspec

from quotagate.policy.reservations import Reservation, State, Transaction
from quotagate.publish import write_atomically
from quotagate.usage.safefs import admins_directory, read_regular

log = logging.getLogger(__name__)

VERSION = 1


ROWS_PER_PIECE = 5_000
"""Rows encoded in one call: an encoder holds the GIL for a whole call, so the event loop would
wait out the encoding of every reservation at once (200,000 of them: 0.5 s with ``json``)."""
_encode = msgspec.json.Encoder().encode


def dumps(reservations: Iterable[Reservation]) -> str:
    rows = [
        (
            r.transaction.client,
            r.transaction.id,
            r.mailbox,
            r.bytes,
            r.made_at,
            r.expires_at,
            r.state,
            r.delivered_at,
            r.copy,
            r.folder,
        )
        for r in reservations
    ]
    pieces = (_encode(rows[i : i + ROWS_PER_PIECE]).decode()[1:-1] for i in range(0, len(rows), ROWS_PER_PIECE))
    return f'{{"version":{VERSION},"reservations":[{",".join(pieces)}]}}'


def loads(text: str) -> list[Reservation]:
    data = msgspec.json.decode(text)
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError("not a reservations file of this version")
    out = []
    for row in data["reservations"]:
        client, id_, mailbox, bytes_, made_at, expires_at, state, delivered_at, *rest = row
        # Rows written before copies (and then their folders) were kept have none.
        copy, folder = (*(str(value) for value in rest[:2]), "", "")[:2]
        if state not in ("held", "flight"):
            raise ValueError(f"unknown state {state!r}")
        out.append(
            Reservation(
                Transaction(str(client), str(id_)),
                str(mailbox),
                int(bytes_),
                float(made_at),
                float(expires_at),
                cast(State, state),
                None if delivered_at is None else float(delivered_at),
                copy,
                folder,
            )
        )
    return out


MAX_BYTES = 1 << 30
"""The most of a reservations file read (far beyond what any daemon holds): a larger one is not restored."""


def _read(path: Path) -> bytes | None:
    """The file's bytes, None when it is missing. Raises OSError for a symlink, a FIFO or device
    (opened without blocking, never read), a hard link of another file."""
    try:
        with admins_directory(path.parent) as directory:
            return read_regular(path.name, directory, MAX_BYTES)
    except FileNotFoundError:  # its directory is missing
        return None


def save(path: Path, reservations: Iterable[Reservation]) -> None:
    """Write the file atomically (mode 0600): a new file beside it, created without following
    anything, renamed over it. Whatever stood at its name (a symlink, a FIFO) is replaced, never
    written through; an unchanged file is left alone."""
    write_atomically(path, dumps(reservations), mode=0o600)


def load(path: Path) -> list[Reservation]:
    """The reservations kept in ``path``; none when it is missing or cannot be used (logged)."""
    try:
        data = _read(path)
        if data is None:
            return []
        return loads(data.decode("utf-8"))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("reservations in %s not restored: %s", path, exc)
        return []


# -- what the shared ledger owes Redis ------------------------------------------------------------
# The changes ([shared]) Redis missed while it was away (transaction ends, deliveries, readings),
# kept beside the reservations file so that a restart before Redis is back replays them still:
# lost, an ended transaction's room would stay held in Redis for reservation_seconds. Each row is
# a list of JSON scalars and lists the ledger makes and reads (see policy/shared.py); the ledger
# keeps at most MAX_PENDING of each kind, so the file is bounded too.
OWED_VERSION = 1


def owed_file(path: Path) -> Path:
    """Where the shared ledger of the daemon whose reservations live in ``path`` keeps what it
    owes Redis."""
    return path.with_name(f"{path.name}.owed")


def save_owed(path: Path, rows: list[list[Any]]) -> None:
    """Write the rows owed to Redis (as :func:`save` writes, atomically, mode 0600); with none,
    the file goes. Raises OSError."""
    owed = owed_file(path)
    if rows:
        pieces = (_encode(rows[i : i + ROWS_PER_PIECE]).decode()[1:-1] for i in range(0, len(rows), ROWS_PER_PIECE))
        write_atomically(owed, f'{{"version":{OWED_VERSION},"owed":[{",".join(pieces)}]}}'.encode(), mode=0o600)
        return
    try:
        with admins_directory(owed.parent) as directory:
            os.unlink(owed.name, dir_fd=directory)  # a symlink there goes itself, never its target
    except FileNotFoundError:
        pass


def load_owed(path: Path) -> list[list[Any]]:
    """The rows kept by :func:`save_owed`; none when missing or unusable (logged)."""
    owed = owed_file(path)
    try:
        data = _read(owed)
        if data is None:
            return []
        decoded = msgspec.json.decode(data)
        if not isinstance(decoded, dict) or decoded.get("version") != OWED_VERSION:
            raise ValueError("not a file of changes owed to Redis of this version")
        rows = decoded["owed"]
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise ValueError("rows are not lists")
        return rows
    except (OSError, ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        log.warning("changes owed to the shared state in %s not restored: %s", owed, exc)
        return []


def listing(reservations: Iterable[Reservation], now: float) -> list[dict[str, Any]]:
    """Reservations as rows for `quotagate reservations`: newest last."""
    return [
        {
            "address": r.mailbox,
            "copy": r.copy,
            "folder": r.folder,
            "transaction": r.transaction.id,
            "client": r.transaction.client,
            "bytes": r.bytes,
            "age": round(now - r.made_at, 1),
            "state": "in flight" if r.state == "flight" else "held",
            "delivered": r.delivered_at is not None,
            # For `check`, to weigh the row as the daemon does: until when it counts, and since
            # when a delivery of it was seen (a reading taken after that includes it).
            "expires_in": round(r.expires_at - now, 1),
            "delivered_ago": None if r.delivered_at is None else round(now - r.delivered_at, 1),
        }
        for r in sorted(reservations, key=lambda r: r.made_at)
    ]
