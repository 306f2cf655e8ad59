"""Room held for mail the daemon accepted and that may still be in flight.

Dovecot's quota-status lets N parallel messages through when each fits alone; holding the
declared size of every accepted message for a while makes the N-th check see the first N-1.
A reservation ends when it expires, or when usage measured after it was made (a maildirsize
update, a scan) shows the mailbox as it is now: the message is then either counted or gone.
Pure bookkeeping: the caller passes the clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from quotagate.decide import Reserved


@dataclass(frozen=True)
class Reservation:
    bytes: int
    made_at: float
    expires_at: float


class Reservations:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._held: dict[str, deque[Reservation]] = {}

    def hold(self, address: str, size: int, now: float) -> None:
        self._held.setdefault(address, deque()).append(Reservation(size, now, now + self.seconds))

    def held(self, address: str, now: float, measured_at: float) -> Reserved:
        """What is held for ``address``, dropping reservations that expired or that usage measured
        at ``measured_at`` already reflects."""
        queue = self._held.get(address)
        if not queue:
            return Reserved()
        # Reservations are appended in time order: the stale ones are at the front.
        while queue and (queue[0].expires_at <= now or queue[0].made_at < measured_at):
            queue.popleft()
        if not queue:
            del self._held[address]
            return Reserved()
        live = [r for r in queue if r.expires_at > now and r.made_at >= measured_at]
        return Reserved(sum(r.bytes for r in live), len(live))

    def prune(self, now: float) -> None:
        """Forget expired reservations of mailboxes nobody asked about since."""
        for address in list(self._held):
            queue = self._held[address]
            while queue and queue[0].expires_at <= now:
                queue.popleft()
            if not queue:
                del self._held[address]

    def total(self) -> tuple[int, int]:
        """(mailboxes, bytes) held, for metrics."""
        return len(self._held), sum(r.bytes for q in self._held.values() for r in q)
