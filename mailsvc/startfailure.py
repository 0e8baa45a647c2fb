"""A refused start exits non-zero, also under ``hypercorn asgi:app``.

Why this exists: hypercorn 0.18's supervisor process reports exit status 0 when its
worker process dies at start-up (it re-joins an already emptied process list and
overwrites the worker's status; pgjones/hypercorn#269, fix proposed in PR #372).
A supervisor (systemd ``Restart=on-failure``, Kubernetes, a deploy script) then
reads a configuration error as a clean stop. So when this process is a worker that
hypercorn's command line spawned, a refused start also ends that supervisor with a
signal, which every supervisor reads as a failure. ``mailsvc serve`` runs hypercorn
in-process and needs none of this. Remove it once hypercorn preserves the status.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["fail_supervisor", "refuse_start"]

log = logging.getLogger("mailsvc")


def _hypercorn_parent() -> int | None:
    """The pid of the hypercorn CLI process that spawned this one, if that is what did."""
    if multiprocessing.parent_process() is None:
        return None
    ppid = os.getppid()
    try:
        cmdline = Path(f"/proc/{ppid}/cmdline").read_bytes()
    except OSError:
        return None
    return ppid if b"hypercorn" in cmdline else None


def fail_supervisor(*_: Any, exception: BaseException | None = None, **__: Any) -> None:
    """Make hypercorn's supervisor exit non-zero (SIGUSR1's default action: terminate); no-op elsewhere.

    The reason is logged here, before the signal: once the supervisor is gone, whoever
    waited on it may stop this process before its own log lines are written.
    """
    ppid = _hypercorn_parent()
    if ppid is not None:
        reason = f": {exception}" if exception is not None else ""
        log.error(
            "start-up refused%s; stopping hypercorn's supervisor (pid %d) so that it exits non-zero", reason, ppid
        )
        os.kill(ppid, signal.SIGUSR1)


def refuse_start(message: str) -> NoReturn:
    """Print why the service will not start, and exit 2 (and the supervisor with it)."""
    print(message, file=sys.stderr)
    fail_supervisor()
    raise SystemExit(2)
