"""The one contract every store keeps: the directory of mailboxes, and the readings of their usage."""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol, Self

from msgspec import Struct

from quotagate.errors import QuotagateError
from quotagate.history import Retention, Sample
from quotagate.model import AliasDomains, Mailbox, Reading, ScanSummary


class StoreError(QuotagateError):
    """A store that cannot be reached or used; the message says which and why."""


class Changes(Struct, frozen=True):
    """What a store holds that changed after a change stamp (:meth:`Store.changes`).

    A part marked ``full`` holds everything (what is not in it is gone); otherwise only what was
    written since, and the addresses removed since.
    """

    stamp: int | None  # give it back to the next call; None: this store has no stamp
    mailboxes_full: bool
    mailboxes: list[Mailbox]
    removed_mailboxes: list[str]
    readings_full: bool
    readings: list[Reading]
    removed_readings: list[str]
    last_scan: ScanSummary | None
    # How many mailboxes the store lists now, when it can say cheaply: a count that differs from
    # the changes applied shows a row added or removed without a stamp (by hand, in SQL).
    mailbox_count: int | None = None


# Which folders of each reading a load decodes: all of them (True), none (False), or those a
# predicate on the folder's name accepts, as name and totals (the daemon's folder limits).
Folders = bool | Callable[[str], bool]


def store_errors() -> tuple[type[Exception], ...]:
    """What a store raises when its database fails: StoreError, and SQLAlchemy's errors once an
    SQL store has loaded SQLAlchemy (until then none can be raised, and importing it to catch
    them would cost a scan of the SQLite store 0.2 s)."""
    if "sqlalchemy.exc" not in sys.modules:
        return (StoreError,)
    from sqlalchemy.exc import SQLAlchemyError

    return (StoreError, SQLAlchemyError)


class _Closable(Protocol):
    def close(self) -> None: ...


class ClosedOnExit:
    """A backend's ``with store:``: closed however the block ends, so no command leaks a connection."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self: _Closable, *exc_info: object) -> None:
        self.close()


class Store(Protocol):
    """Checked by ``mypy --strict`` through the typed factories of :mod:`quotagate.store`."""

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def close(self) -> None: ...

    def migrate(self) -> list[str]:
        """Create or upgrade quotagate's tables; returns what was applied."""
        ...

    def migration_sql(self) -> list[str]:
        """The statements :meth:`migrate` would run, for the admin to read first."""
        ...

    def upsert_mailboxes(self, mailboxes: Sequence[Mailbox]) -> None: ...

    def mailboxes(self) -> list[Mailbox]: ...

    def mailbox(self, address: str) -> Mailbox | None: ...

    def domain_aliases(self) -> AliasDomains:
        """Active alias domains, each to the domain whose mailboxes it reaches (PostfixAdmin's
        ``alias_domain``): ``user@alias.example`` is delivered to ``user@example.org``."""
        ...

    def readings(self, with_folders: bool = True) -> dict[str, Reading]:
        """Every stored reading; without folders (an empty tuple) when only totals are needed."""
        ...

    def reading(self, address: str) -> Reading | None: ...

    def changes(self, since: int | None, with_readings: bool = True, with_folders: Folders = True) -> Changes:
        """Mailboxes and readings written after the change stamp ``since`` (None: everything).

        A store without change stamps (or a ``since`` it cannot vouch for: another database, a
        restored one) answers with everything, marked full. Without readings: none, marked full.
        ``with_folders``: which folders of each reading (see :data:`Folders`).
        """
        ...

    def save_readings(
        self, changed: Sequence[Reading], removed: Collection[str], flags: Mapping[str, bool] | None = None
    ) -> None:
        """Write changed readings, drop removed ones and publish over-quota ``flags`` that changed,
        all in one transaction: the MTA never sees a half-updated set."""
        ...

    def record_scan(self, summary: ScanSummary) -> None: ...

    def last_scan(self) -> ScanSummary | None: ...

    # -- usage history (quotagate.history) ----------------------------------------------------
    def record_history(self, samples: Sequence[Sample]) -> None:
        """Add samples, in one transaction."""
        ...

    def history(self, since: float, addresses: Collection[str] | None = None) -> dict[str, list[Sample]]:
        """Samples taken at or after ``since``, per mailbox in time order (only ``addresses``' if given)."""
        ...

    def prune_history(self, now: float, retention: Retention) -> int:
        """Thin samples with age and drop expired ones; returns how many rows went."""
        ...

    # -- the warnings ledger (quotagate.warn) -----------------------------------------------
    def sent_warnings(self) -> dict[str, set[str]]:
        """The notices sent to each mailbox and not re-armed since."""
        ...

    def claim_warning(self, address: str, notice: str, at: float) -> bool:
        """Record ``notice`` as sent to ``address``; False when it already was (by this host or
        another): only the caller that got True sends it."""
        ...

    def release_warnings(self, address: str, notices: Collection[str]) -> None:
        """Re-arm these notices (the mailbox dropped below them, or a send failed)."""
        ...
