"""The event loop ``mailsvc serve`` runs: the connection cap on hypercorn's sockets, accept() failures throttled.

Why a loop of our own: hypercorn opens its servers with ``asyncio.start_server`` and offers no hook around
accepting a connection, and asyncio reports each ``accept()`` that fails for want of a descriptor through the
loop's exception handler, with a traceback (``BaseSelectorEventLoop._accept_connection``: for EMFILE, ENFILE,
ENOBUFS and ENOMEM it calls the handler and schedules a retry in a second, but before Python 3.15 it then
carries on trying, up to ``backlog`` times per wake-up, each failure another traceback and another retry;
CPython gh-151615). So:

- :meth:`ServingLoop.create_server` wraps the protocol of the sockets it was told to cap (the dev inbox's SMTP
  server is left alone);
- :class:`ListeningSocket` answers "nothing to accept" for the rest of a wake-up after such a failure, which is
  what the CPython fix does;
- :class:`AcceptErrorLog` turns what remains into one line per interval, with the count and the fix.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from typing import Any

from .connections import ConnectionCap
from .throttle import Throttle

__all__ = ["RESOURCE_ERRNOS", "AcceptErrorLog", "ListeningSocket", "ServingLoop"]

log = logging.getLogger("mailsvc.serving")

RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ListeningSocket(socket.socket):
    """A listening socket whose ``accept()``, after a resource error, reports nothing to accept for a moment.

    asyncio's retry comes a second later (``ACCEPT_RETRY_DELAY``); until half of that has passed, ``accept()``
    raises BlockingIOError, which ends asyncio's accept loop for this wake-up as an empty queue does.
    """

    backoff_seconds = 0.5

    @classmethod
    def adopt(cls, sock: socket.socket) -> ListeningSocket:
        """The same listening descriptor, now this class (``sock`` no longer owns it)."""
        return cls(sock.family, sock.type, sock.proto, fileno=sock.detach())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._backoff_until = 0.0

    def accept(self) -> tuple[socket.socket, Any]:
        if time.monotonic() < self._backoff_until:
            raise BlockingIOError(errno.EAGAIN, "not accepting for a moment after running out of resources")
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                self._backoff_until = time.monotonic() + self.backoff_seconds
            raise


class ServingLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop; servers created on a socket passed to :meth:`cap` count against its cap."""

    def __init__(self) -> None:
        super().__init__()
        self._caps: dict[int, ConnectionCap] = {}

    def cap(self, sock: socket.socket, cap: ConnectionCap) -> None:
        self._caps[sock.fileno()] = cap

    async def create_server(self, protocol_factory: Any, *args: Any, **kwargs: Any) -> asyncio.Server:
        sock = kwargs.get("sock")
        cap = self._caps.get(sock.fileno()) if isinstance(sock, socket.socket) else None
        if cap is not None:
            protocol_factory = cap.wrap(protocol_factory)
        return await super().create_server(protocol_factory, *args, **kwargs)


class AcceptErrorLog:
    """The loop's exception handler: an ``accept()`` out of descriptors (or memory) is one line per interval
    with a count and the fix; anything else goes to asyncio's default handler, as before."""

    def __init__(self, throttle: Throttle | None = None) -> None:
        self._throttle = throttle or Throttle()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS and "socket" in context):
            loop.default_exception_handler(context)
            return
        count = self._throttle.due()
        if count is not None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.error(
                "cannot accept connections (%d failure(s) in the last %g s): %s; open-file limit %s. New clients "
                "wait in the listen backlog meanwhile. Raise the limit (ulimit -n, systemd LimitNOFILE=) or lower "
                "MAILSVC_MAX_CONNECTIONS",
                count,
                self._throttle.interval,
                exc,
                soft,
            )
