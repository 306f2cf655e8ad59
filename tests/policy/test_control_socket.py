"""The control socket (``quotagate reservations``) answers anything malformed with
``{"error": ...}``, even a request line nested too deep for ``json.loads`` (a RecursionError)
or longer than the stream's 64 kB limit (a ValueError from ``readline``). The socket is mode
0600 (root only): a buggy client, not an attack from outside.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from quotagate.policy import control
from quotagate.policy.reservations import Reservations, Transaction
from tests.policy.conftest import run


async def exchange(path: Path, line: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(line)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "line",
    [b"[" * 3000 + b"\n", b'{"op": "list", "address": "' + b"x" * 70_000 + b'"}\n'],
    ids=["nested-too-deep", "longer-than-64k"],
)
def test_a_malformed_control_request_gets_an_error_answer(short_tmp: Path, line: bytes) -> None:
    """Attack (a buggy client of the control socket): one malformed request line. Expected: one
    JSON line ``{"error": ...}`` back, as for any other malformed request."""
    path = short_tmp / "control.sock"

    async def main() -> bytes:
        server = await control.serve(path, Reservations(600))
        try:
            return await exchange(path, line)
        finally:
            server.close()
            await server.wait_closed()

    answer = run(main())
    assert answer, "no answer at all"
    assert "error" in json.loads(answer)


@pytest.mark.parametrize("asked", ["Ärger@example.org", "ÄRGER@EXAMPLE.ORG"])
def test_a_mailbox_is_found_as_mailboxes_are_keyed(asked: str) -> None:
    """Scenario: room held for the mailbox ``Ärger@example.org`` (SMTPUTF8: its key keeps the Ä,
    as Exim and Postfix lower A-Z only) and for ``kate@example.org``; the admin lists and then
    releases the room of ``asked``.
    Expected: the mailbox's own room is listed and released, and nothing of another mailbox's.
    Lowered with Python's ``str.lower()``, the address was ``ärger@...``, found nowhere ("no room
    held", "released 0"); and a Kelvin sign, which it lowers to ``k``, would have named Kate's."""
    reservations = Reservations(600)
    for n, mailbox in enumerate(["Ärger@example.org", "kate@example.org"]):
        reservations.hold(Transaction("192.0.2.1", f"tx-{n}"), mailbox, 500, 0.0, 10**9, 10**6)

    async def main() -> tuple[dict[str, Any], ...]:
        return (
            await control.handle(reservations, {"op": "list", "address": asked}, 1.0),
            await control.handle(reservations, {"op": "release", "address": "\u212aate@example.org"}, 1.0),
            await control.handle(reservations, {"op": "release", "address": asked}, 1.0),
            await control.handle(reservations, {"op": "list", "address": None}, 1.0),
        )

    listed, kelvin, released, left = run(main())
    assert [row["address"] for row in listed["reservations"]] == ["Ärger@example.org"]
    assert kelvin == {"released": 0}
    assert released == {"released": 1}
    assert [row["address"] for row in left["reservations"]] == ["kate@example.org"]


def test_a_control_request_for_something_that_is_no_address_gets_an_error() -> None:
    """Scenario: a list request whose address has a control character in it. Expected: an error
    answer saying so, as for any request the daemon cannot take."""
    answer = run(control.handle(Reservations(600), {"op": "list", "address": "a\x1b[2J@example.org"}, 1.0))
    assert "not an address" in answer["error"]


def test_a_listing_shows_the_oldest_reservations_and_counts_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenario: the daemon holds more reservations than a listing shows (MAX_LISTED, here 3 of
    5); the admin lists them all, then one mailbox's.
    Expected: the oldest are listed, oldest first, and how many more is said. The whole listing
    (a busy MX holds hundreds of thousands) was built, sorted and encoded on the event loop,
    every policy check waiting behind it past Exim's 2 s."""
    monkeypatch.setattr(control, "MAX_LISTED", 3)
    reservations = Reservations(600)
    for n in range(5):
        reservations.hold(Transaction("192.0.2.1", f"tx-{n}"), "a@example.org", 500, float(n), 10**9, 10**6)
    reservations.hold(Transaction("192.0.2.1", "tx-b"), "b@example.org", 500, 9.0, 10**9, 10**6)

    everything = run(control.handle(reservations, {"op": "list"}, 10.0))
    assert [row["transaction"] for row in everything["reservations"]] == ["tx-0", "tx-1", "tx-2"]
    assert everything["more"] == 3
    one = run(control.handle(reservations, {"op": "list", "address": "b@example.org"}, 10.0))
    assert [row["transaction"] for row in one["reservations"]] == ["tx-b"] and "more" not in one
