"""One delivery told twice: by Exim's delivery hint and by the watch seeing its file land.

Both are ways the daemon learns that a message landed, and a site may have both (the full output
of ``exim-config --method policy`` carries the hint, and ``[watch] enabled`` follows the spool).
Each word of a delivery releases a reservation in flight, so the second word of one delivery
would release the room of another message still on its way. Neither says which message landed,
only its mailbox and size: the hint ``$message_size``, the watch the ``S=`` in the name, which
also counts the headers the transport adds. A word from one source is the echo of a word from
the other when it names the same mailbox, within a few seconds, with a size that close. A real
second delivery taken for an echo keeps its room held a while longer (until it expires): never
less room held than is on its way. Pure bookkeeping: the caller passes the clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

ECHO_SECONDS = 10.0  # the hint is told at delivery; the watch sees the file within a flush
# Words kept per mailbox: each new one is weighed against these. More within ECHO_SECONDS (a
# flood of hints from a client) push the oldest out: one of them echoed later counts again.
MAX_WORDS = 32


@dataclass
class _Word:
    at: float
    size: int
    source: str
    answered: bool = False  # paired with the other source's word already


def same_message(a: int, b: int) -> bool:
    """Two sizes told of one message: apart by the transport's headers (a few hundred bytes) or
    a count of line ends (a few percent)."""
    return abs(a - b) <= min(a, b) // 20 + 1024


class Echoes:
    def __init__(self, seconds: float = ECHO_SECONDS) -> None:
        self.seconds = seconds
        self._by_mailbox: dict[str, deque[_Word]] = {}
        self._order: deque[tuple[str, _Word]] = deque()  # every word, oldest first, to forget them

    def first(self, mailbox: str, size: int, source: str, now: float) -> bool:
        """Whether this word of a delivery is news: False when it echoes one the other source
        told of lately (that one is then answered: a third word is news again)."""
        self._forget(now)
        words = self._by_mailbox.setdefault(mailbox, deque())
        for word in words:
            if not word.answered and word.source != source and same_message(word.size, size):
                word.answered = True
                return False
        word = _Word(now, size, source)
        words.append(word)
        if len(words) > MAX_WORDS:
            words.popleft()
        self._order.append((mailbox, word))
        return True

    def _forget(self, now: float) -> None:
        while self._order and self._order[0][1].at <= now - self.seconds:
            mailbox, word = self._order.popleft()
            words = self._by_mailbox.get(mailbox)
            if words and words[0] is word:  # not pushed out by newer ones already
                words.popleft()
                if not words:
                    del self._by_mailbox[mailbox]
