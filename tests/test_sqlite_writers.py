"""Writers of one SQLite outbox across processes queue on ``<file>-writers`` (mailsvc/outbox/sqlite_writers.py).

The other writer is a real second process holding that lock, as the service's worker process does while
its transaction runs.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from mailsvc import Message
from mailsvc.errors import OutboxError
from mailsvc.outbox import SqliteOutbox

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
fcntl.flock(fd, fcntl.LOCK_UN)
print("released", flush=True)
sys.stdin.readline()
"""


@contextmanager
def other_process_holding(lock: Path) -> Iterator[subprocess.Popen[str]]:
    """A process that holds ``lock`` until a line arrives on its stdin."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        proc.kill()
        proc.communicate()  # reaps it and closes both pipes


def let_go(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "released\n"


def envelope(n: int):  # type: ignore[no-untyped-def]
    return Message(f"n{n}", recipients=[f"u{n}@example.com"], body="x", sender="s@example.com").build()


def stored(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])


async def test_a_write_waits_for_the_other_process_and_commits_when_it_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    async with SqliteOutbox(path) as outbox:
        with other_process_holding(Path(f"{path}-writers")) as other:
            task = asyncio.create_task(outbox.enqueue([envelope(0)]))
            await asyncio.sleep(0.5)
            assert not task.done(), "wrote while another process held the writers' lock"
            assert stored(path) == 0
            await asyncio.to_thread(let_go, other)
            await asyncio.wait_for(task, 30)
        assert stored(path) == 1
        await outbox.enqueue([envelope(1)])  # the lock taken in a thread was let go
    assert stored(path) == 2


async def test_held_past_the_busy_timeout_is_a_clear_error_and_the_next_write_works(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    async with SqliteOutbox(path, busy_timeout=0.3) as outbox:
        with other_process_holding(Path(f"{path}-writers")) as other:
            with pytest.raises(OutboxError, match=r"another process has held its write lock .*-writers.* 0.3 s"):
                await outbox.enqueue([envelope(0)], idempotency_key="k")
            assert stored(path) == 0, "nothing half-queued"
            await asyncio.to_thread(let_go, other)
            # The thread that was still waiting takes the lock now, on a file description given up: closing
            # it lets go, and this process's writers use a fresh one.
            result = await asyncio.wait_for(outbox.enqueue([envelope(1)], idempotency_key="k"), 30)
            assert result.ids
        assert stored(path) == 1
