"""One log line per period for a condition that can recur thousands of times a second.

A store that is down makes every request stale, a flood of clients hits the connection cap on
every accept: logging each would drown the log (and cost more than the answers). The first
occurrence is logged at once, then at most one line per period, saying how many happened since
the last line, so that nothing is hidden and the log stays readable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

PERIOD = 60.0


class Throttled:
    """A warning for one cause, logged at most once per ``period`` seconds, with a count."""

    def __init__(
        self, logger: logging.Logger, period: float = PERIOD, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.period = period
        self.clock = clock
        self._next = float("-inf")
        self._count = 0

    def warning(self, message: str, *args: object) -> bool:
        """Count one occurrence; log it (with the count since the last line) when a period has passed.

        Returns whether a line was written.
        """
        self._count += 1
        now = self.clock()
        if now < self._next:
            return False
        self._next = now + self.period
        count, self._count = self._count, 0
        self.logger.warning(message + " (%d times since the last such line)", *args, count)
        return True
