"""Server processes in tests: started in a session of their own, stopped as a whole group.

Why a group: ``hypercorn asgi:app`` runs the app in a worker child; stopping only the
parent leaves the child serving (and holding its port) after the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess

__all__ = ["free_port", "stop_group"]


def free_port() -> int:
    """A port free now (hypercorn's CLI cannot report a port-0 bind; the small race is accepted)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process's group (it was started with ``start_new_session=True``), SIGKILL it if it lingers."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
