"""The service's delivery workers in a process of their own: ``mailsvc worker``, started and watched by the service.

Why: in-process workers share the web process's event loop and GIL, so under load every message
delivered is CPU taken from the POSTs. On a machine with a second core, ``mailsvc serve`` and
``hypercorn asgi:app`` (``MAILSVC_WORKER_PROCESS`` unset: :func:`decide`) run the workers as a child
process instead, still one command. Measured with ``bench/post_wrk.py`` (issue 18's note has the figures).

How the two processes talk: a pipe. The service writes a byte on it after each commit that made mail due
(SQLite cannot wake another process; PostgreSQL's NOTIFY already does), and the child's ``--wake-fd``
turns the byte into an immediate claim. The child stops (finishing what is on the wire, giving back
the rest) when the pipe closes: when the service stops, and when the service dies however it dies.
A child that exits by itself is started again after a pause that grows to a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from .config import ServiceConfig
from .outbox import Outbox

__all__ = ["WorkerProcess", "decide"]

log = logging.getLogger("mailsvc.runtime")

STOP_GRACE = 30.0  # seconds a stopping child may take to finish what is on the wire before SIGKILL
FIRST_PAUSE, LAST_PAUSE = 1.0, 60.0  # before restarting a child that exited by itself


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decide(service: ServiceConfig) -> ServiceConfig:
    """``MAILSVC_WORKER_PROCESS`` unset: a process of their own when there is a core for it and real mail.

    Dev mode keeps its workers in process: they deliver to the dev inbox, whose port is known only once
    the service runs, and a single process is what a developer debugs. Only the service's entry points
    decide; an app built with :func:`mailsvc.app.create_app` keeps its workers in process unless told.
    """
    if service.worker_process is not None:
        return service
    # POSIX only: the pipe is handed to the child by number (pass_fds).
    wanted = service.workers > 0 and not service.dev_mode and usable_cores() > 1 and os.name == "posix"
    return service.model_copy(update={"worker_process": wanted})


class WorkerProcess:
    """One ``mailsvc worker`` child, woken on the service's commits, restarted when it dies."""

    def __init__(self, outbox: Outbox, metrics_bind: str | None = None) -> None:
        # The child's own /metrics (MAILSVC_WORKER_METRICS_BIND): the web process's has no worker figures.
        bind = ["--metrics-bind", metrics_bind] if metrics_bind else []
        self.argv = [sys.executable, "-m", "mailsvc", "worker", *bind]
        self.proc: asyncio.subprocess.Process | None = None
        self._wake_fd: int | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self.starts = 0
        outbox.on_work(self.wake)

    async def start(self) -> None:
        await self._spawn()
        self._watch = asyncio.create_task(self._supervise(), name="mailsvc-worker-process")

    def describe(self) -> dict[str, object]:
        """For ``/readyz``: the child now, and how often it had to be started again (a crash loop shows here)."""
        running = self.proc is not None and self.proc.returncode is None
        return {
            "pid": self.proc.pid if self.proc is not None else None,
            "state": "running" if running else "restarting",
            "restarts": max(self.starts - 1, 0),
        }

    def wake(self) -> None:
        """A byte down the pipe; a full pipe already holds a wake-up, a closed one a child being replaced."""
        if self._wake_fd is None:
            return
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self._wake_fd, b"\0")

    async def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        proc = self.proc
        self._close_pipe()  # the child's signal to stop, whatever else happens
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE)
        except TimeoutError:
            log.warning("delivery worker process %d did not stop within %g s; killing it", proc.pid, STOP_GRACE)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _spawn(self) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        try:
            self.proc = await asyncio.create_subprocess_exec(*self.argv, "--wake-fd", str(read_fd), pass_fds=(read_fd,))
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)  # the child's now; ours would keep the pipe open after the child died
        self._close_pipe()
        self._wake_fd = write_fd
        self.starts += 1
        log.info("started the delivery worker process (pid %d)", self.proc.pid)
        self.wake()  # mail may have become due while no child listened

    def _close_pipe(self) -> None:
        fd, self._wake_fd = self._wake_fd, None
        if fd is not None:
            os.close(fd)

    async def _supervise(self) -> None:
        pause = FIRST_PAUSE
        while True:
            assert self.proc is not None
            started = asyncio.get_running_loop().time()
            code = await self.proc.wait()
            if self._stopping:
                return
            if asyncio.get_running_loop().time() - started > LAST_PAUSE:
                pause = FIRST_PAUSE  # it ran a while: a new failure, not the same one again
            log.error(
                "the delivery worker process (pid %d) exited with %s; starting another in %g s",
                self.proc.pid,
                code,
                pause,
            )
            self._close_pipe()
            while True:  # a child that cannot even be started is tried again, with the same growing pause
                await asyncio.sleep(pause)
                pause = min(pause * 2, LAST_PAUSE)
                try:
                    await self._spawn()
                    break
                except OSError as exc:
                    log.error("cannot start the delivery worker process: %s; trying again in %g s", exc, pause)
