"""The reservations file: what is saved is restored, and it is encoded a piece at a time (an
encoder holds the GIL for a whole call, and the daemon's event loop waits meanwhile)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from quotagate.policy import state
from quotagate.policy.reservations import Reservations, Transaction


def _many(n: int) -> Reservations:
    r = Reservations(600)
    for i in range(n):
        t = Transaction(f"2001:db8:{i % 50:x}::/48", f"{i}.1700000000")
        folder = "Archive" if i % 5 == 0 else ""  # a copy for a folder with limits of its own
        copy = f"user{i % 40}+{folder}" if folder else ""
        assert r.hold(t, f"user{i % 40}@example.org", 1000 + i, 1.0, 10**9, 10**9, copy, folder, (10**9, 10**9))
        if i % 3 == 0:
            r.end(t, with_data=True, now=2.0)
    r.delivered("user0@example.org", 3.0)
    return r


def test_what_is_saved_is_restored(tmp_path: Path) -> None:
    saved = _many(2 * state.ROWS_PER_PIECE + 7)
    path = tmp_path / "reservations.json"
    state.save(path, saved)
    restored = Reservations(600)
    assert restored.restore(state.load(path), 4.0) == len(saved)
    assert _rows(restored) == _rows(saved)


def _rows(reservations: Reservations) -> list[tuple[object, ...]]:
    return sorted(
        (r.transaction.id, r.mailbox, r.copy, r.folder, r.bytes, r.state, r.delivered_at, r.made_at, r.expires_at)
        for r in reservations
    )


def test_a_file_of_the_version_before_folders_were_kept_is_restored(tmp_path: Path) -> None:
    """Rows of the daemon before this one end at the copy: restored, for no folder (their room
    counts against the mailbox, as it did), and the sums of what is held stay whole."""
    path = tmp_path / "reservations.json"
    row = ["192.0.2.1", "t1", "a@example.org", 700, 1.0, 600.0, "held", None, "a+Archive"]
    path.write_text(msgspec.json.encode({"version": state.VERSION, "reservations": [row]}).decode())
    restored = Reservations(600)
    assert restored.restore(state.load(path), 2.0) == 1
    assert [(r.copy, r.folder) for r in restored] == [("a+Archive", "")]
    assert restored.held("a@example.org", 2.0, 0).bytes == 700
    assert restored.held_in("a@example.org", "Archive").bytes == 0


def test_the_file_is_encoded_a_piece_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    rows_per_call: list[int] = []
    encode = msgspec.json.Encoder().encode

    def counting(rows: list[object]) -> bytes:
        rows_per_call.append(len(rows))
        return encode(rows)

    monkeypatch.setattr(state, "_encode", counting)
    state.dumps(_many(3 * state.ROWS_PER_PIECE))
    assert len(rows_per_call) == 3 and max(rows_per_call) <= state.ROWS_PER_PIECE


def test_an_empty_set_and_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "reservations.json"
    state.save(path, [])
    assert state.load(path) == []
    path.write_text('{"version": 1, "reservations": [["c", "t", "m", 1, 1.0, 2.0, "lost", null]]}')
    assert state.load(path) == []  # logged, not restored
