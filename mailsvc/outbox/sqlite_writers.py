"""Writers of one SQLite outbox file, across processes, queued on a kernel lock before ``BEGIN IMMEDIATE``.

Why: SQLite's own wait for its write lock (the busy handler) is a poll with growing sleeps of up to
100 ms each. With the service and its delivery worker process writing the same file, a POST's group
commit that found the worker's transaction in progress slept through most of that: under ``wrk -c20``
the POST's p99 went from 45-61 ms (one process) to 387-471 ms (two). A process blocked in ``flock``
is woken by the kernel the moment the holder lets go, so the wait is the other transaction's length
and no more. Writers that do not take this lock (an older mailsvc, the ``sqlite3`` shell) are still
kept apart by SQLite itself, with its busy handler, exactly as before.

The lock lives in ``<database>-writers`` beside ``-wal`` and ``-shm``, and guards only the order of
writers: correctness still rests on SQLite's locking, never on this file.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import ModuleType

from ..errors import OutboxError

__all__ = ["WriterQueue"]

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # not POSIX: no flock; SQLite's busy handler alone keeps writers apart, as before
    fcntl = None


class WriterQueue:
    """One process's place in the queue of writers of ``path`` (one open file description)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(f"{path}-writers")
        self._fd = self._open()

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise OutboxError(f"cannot open the outbox's writer lock {str(self.path)!r}: {exc}") from exc

    async def acquire(self, timeout: float) -> None:
        """Hold the lock, waiting at most ``timeout`` seconds for another process to let go."""
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the common case: nobody else writes now
            return
        except BlockingIOError:
            pass
        fd = self._fd
        taken = asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
        try:
            await asyncio.wait_for(asyncio.shield(taken), timeout)
        except BaseException as exc:
            # The thread may still take the lock later. Its file description is given up (closing it lets
            # go of anything taken late) and this process queues on a fresh one from now on.
            self._fd = self._open()
            taken.add_done_callback(lambda _: os.close(fd))
            if isinstance(exc, TimeoutError):
                raise OutboxError(
                    f"the outbox database cannot be written: another process has held its write lock "
                    f"({str(self.path)!r}) for more than {timeout:g} s"
                ) from None
            raise

    def release(self) -> None:
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)
