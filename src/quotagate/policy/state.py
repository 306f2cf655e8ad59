"""Reservations kept across restarts: a small JSON file the daemon rewrites when they changed.

Written atomically (temp file and rename, mode 0600) off the event loop, at most every few
seconds and once more on shutdown, and read once at start: a daemon restarted between a burst's
RCPTs and its DATA still holds the room it promised. A file that cannot be read is logged and
ignored: a restart then forgets reservations, as before they were kept, but never fails.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import msgspec

from quotagate.policy.reservations import Reservation, State, Transaction
from quotagate.publish import write_atomically

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


def save(path: Path, reservations: Iterable[Reservation]) -> None:
    write_atomically(path, dumps(reservations), mode=0o600)


def load(path: Path) -> list[Reservation]:
    try:
        return loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("reservations in %s not restored: %s", path, exc)
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
        }
        for r in sorted(reservations, key=lambda r: r.made_at)
    ]
