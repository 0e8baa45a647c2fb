"""While a request's CPU-heavy work runs in a thread beside the event loop: the GIL handed over every 0.5 ms.

Why: CPython lets a thread keep the GIL for the switch interval (5 ms by default) after another thread
asked for it. A bulk request validates, renders and builds 100,000 messages in a thread; each time the
event loop (or the SQLite connection's thread) woke, it waited up to 5 ms, and a single POST or one
transaction takes a dozen such turns: single POSTs took 100 ms and more during a bulk, and SQLite's
write lock was held that much longer by every transaction, so other processes' lease renewals waited
(``bench/bulk_stall.py``). The interval is per process, so it is lowered only while such work runs,
counted so that overlapping requests put the old value back once, after the last.

    >>> with sharing():
    ...     pass  # asyncio.to_thread(...) of pure-Python work
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SHARE_INTERVAL", "sharing"]

SHARE_INTERVAL = 0.0005  # seconds: a waiting thread has the GIL within about this


class _Sharing:
    """How many are sharing, and the interval to put back after the last (only the loop's thread uses it)."""

    def __init__(self) -> None:
        self.users = 0
        self.saved = sys.getswitchinterval()


_state = _Sharing()


@contextmanager
def sharing() -> Iterator[None]:
    """The switch interval at most :data:`SHARE_INTERVAL` inside; the previous one back after the last user."""
    if _state.users == 0:
        _state.saved = sys.getswitchinterval()
        sys.setswitchinterval(min(_state.saved, SHARE_INTERVAL))
    _state.users += 1
    try:
        yield
    finally:
        _state.users -= 1
        if _state.users == 0:
            sys.setswitchinterval(_state.saved)
