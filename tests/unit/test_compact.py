"""Snapshot versions keep the objects they made for look-ups; a new version never shows an old one's."""

from __future__ import annotations

from quotagate.model import Limits, Mailbox
from quotagate.policy import compact
from quotagate.store.base import Changes


def changes(*mailboxes: Mailbox, full: bool = False) -> Changes:
    return Changes(None, full, list(mailboxes), [], False, [], [], None)


def test_a_new_version_answers_with_its_own_numbers_while_the_old_one_keeps_its_own() -> None:
    first = compact.updated(None, changes(Mailbox("a@example.org", Limits(100)), full=True))
    looked_up = first.mailbox("a@example.org")
    assert looked_up is first.mailbox("a@example.org")  # made once
    assert first.mailbox("b@example.org") is None
    second = compact.updated(first, changes(Mailbox("a@example.org", Limits(200)), Mailbox("b@example.org")))
    assert second.mailbox("a@example.org") == Mailbox("a@example.org", Limits(200))
    assert second.mailbox("b@example.org") == Mailbox("b@example.org")
    assert first.mailbox("a@example.org") is looked_up and first.mailbox("b@example.org") is None


def test_the_objects_kept_are_bounded() -> None:
    boxes = [Mailbox(f"u{n}@example.org", Limits(n)) for n in range(compact._MEMO + 10)]
    table = compact.updated(None, changes(*boxes, full=True))
    for box in boxes:
        assert table.mailbox(box.address) == box
    assert len(table._mailbox_memo) <= compact._MEMO


def test_going_through_every_mailbox_leaves_the_busy_ones_kept() -> None:
    """Whole-table passes (the daemon's read-ahead, [watch]'s reload) make their objects anew:
    only the request path's look-ups (get) are kept."""
    boxes = [Mailbox(f"u{n}@example.org", Limits(n)) for n in range(100)]
    table = compact.updated(None, changes(*boxes, full=True))
    busy = table.mailboxes.get("u1@example.org")
    assert list(table.mailboxes.values()) == boxes
    assert list(table.readings.values()) == []
    assert table._mailbox_memo == {"u1@example.org": busy}
