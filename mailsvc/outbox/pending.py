"""How many messages are pending, as a grouped enqueue checks ``MAILSVC_MAX_PENDING``, without counting them each time.

Why: the count is a scan of the due index that grows with the queue (0.2 ms at 12,000 pending, 2 ms at
100,000), and a group commit paid it in every transaction, inside the write lock. Here the count read in
one transaction is carried to the next by what this process commits, and read again (in the transaction,
under the write lock, as before) when:

* the group might not fit below half the limit: past half, every group counts, as before, so a
  refusal is always decided on a fresh count and the limit holds exactly as it did for this process;
* the count is older than :data:`RECOUNT_SECONDS`;
* this process queued messages another way (a stream, a bulk's seal) or a grouped commit failed.

Deliveries (in any process) only lower the real number, so the carried one errs high: at worst a
needless count. What it cannot see is what *other* processes queued since it was read: those are
counted within :data:`RECOUNT_SECONDS`, and at once when this process's count is past half the limit,
so the limit can be passed only by what other processes add, in that second, to a queue under half full.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

__all__ = ["RECOUNT_SECONDS", "PendingCount"]

RECOUNT_SECONDS = 1.0  # the longest a carried count goes unread (what other processes queued shows by then)


class PendingCount:
    """The pending count of the last grouped transaction, carried forward (see the module docstring).

    Grouped transactions run one at a time (:class:`~.groups.GroupCommit`); every other enqueue calls
    :meth:`forget` once it has stored something, so the next group counts again.
    """

    def __init__(self, recount_seconds: float = RECOUNT_SECONDS) -> None:
        self.recount_seconds = recount_seconds  # tests set 0: every group counts
        self._known: int | None = None
        self._read_at = 0.0
        self._changes = 0  # bumped by forget(): a count read before it is not carried past it

    async def read(self, count: Callable[[], Awaitable[int]], adding: int, limit: int) -> tuple[int, int]:
        """The pending count for a group about to add ``adding`` messages, and a token for :meth:`carry`.

        ``count`` reads the real number (inside the group's transaction); it is called unless the
        carried number is fresh and the group fits below half the limit with it.
        """
        token = self._changes
        known = self._known
        now = time.monotonic()
        if known is None or now - self._read_at >= self.recount_seconds or 2 * (known + adding) > limit:
            known = await count()
            self._known, self._read_at = known, now
        return known, token

    def carry(self, pending: int, token: int) -> None:
        """After a group committed: ``pending`` (what it read plus what it stored) is the count now."""
        if token == self._changes:
            self._known = pending
        else:  # something else stored meanwhile: count again
            self._known = None

    def forget(self) -> None:
        """Messages were queued (or a transaction failed) outside what :meth:`carry` knows: count again."""
        self._changes += 1
        self._known = None
