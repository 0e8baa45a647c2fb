"""A log line per interval, with a count, for an event that can happen thousands of times a second.

Why: asyncio logs a traceback for every ``accept()`` that fails for want of a file descriptor, and retries
at once; the process wrote 43 MB of them in 30 s (issue 13, finding 9). One line saying what happens, how
often, and the fix is what an operator can use.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Throttle"]


class Throttle:
    """Says when to log: the first event, then the first one after each ``interval`` with the count since.

    >>> clock = iter([0.0, 1.0, 2.0, 11.0]).__next__
    >>> throttle = Throttle(10.0, clock=clock)
    >>> [throttle.due() for _ in range(4)]
    [1, None, None, 3]
    """

    def __init__(self, interval: float = 10.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self._count = 0

    def due(self) -> int | None:
        """Count one event; the number of events to report if a line is due now, else None."""
        self._count += 1
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            return None
        self._last, count, self._count = now, self._count, 0
        return count
