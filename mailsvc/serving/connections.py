"""A cap on the client connections one process holds open, beyond which new ones get a 503 at once.

Why: hypercorn has no such cap (its ``backlog`` is only the kernel's queue of connections not yet
accepted). Every open connection holds a file descriptor; slow clients holding a thousand of them ran the
process out (issue 13, finding 9), and then everything in it fails, not just new clients: the outbox's
database, the relay's connections, the dev inbox. Answering ``503`` + ``Retry-After`` beyond a cap that fits
under the open-file limit keeps those working, and tells a client (or a proxy) to come back.

The cap counts connections from the moment they are accepted, so a client still sending its headers counts
too: that is what a slow client holds.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from typing import cast

from .throttle import Throttle

__all__ = ["RESERVED_FILES", "ConnectionCap", "fit_to_open_files"]

log = logging.getLogger("mailsvc.serving")

# Descriptors the process needs besides client connections: listening sockets, the outbox's database, the
# relay pool, the dev inbox, log files, the event loop's own; and the refused connections still lingering.
RESERVED_FILES = 128
# A refused connection is closed only when the client has read the 503 and closed its side, or after this
# long: closing a socket whose request is still unread makes the kernel reset it, which can destroy the 503
# before the client reads it. At most MAX_LINGERING refusals wait like this; beyond, they close at once.
REFUSAL_LINGER = 1.0
MAX_LINGERING = 32

_BODY = b'{"type": "about:blank", "title": "Service Unavailable", "status": 503, "detail": "too many connections"}'
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/problem+json\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
)


def fit_to_open_files(cap: int) -> int:
    """The cap this process can honour: raises the soft open-file limit toward the hard one if needed
    (as Go's runtime does at start-up), and lowers the cap, with a warning, if that is not enough."""
    if cap == 0:
        return 0
    want = cap + RESERVED_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        raised = want if hard == resource.RLIM_INFINITY else min(hard, want)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= want:
        return cap
    fitted = max(1, soft - RESERVED_FILES)
    log.warning(
        "MAILSVC_MAX_CONNECTIONS=%d needs %d open files but this process may open %d (hard limit %d): serving at "
        "most %d connections; raise the limit (ulimit -n, systemd LimitNOFILE=) to serve more",
        cap,
        want,
        soft,
        hard,
        fitted,
    )
    return fitted


class ConnectionCap:
    """Counts the open connections of the servers it wraps; :meth:`wrap` is applied to a protocol factory."""

    def __init__(self, limit: int, *, throttle: Throttle | None = None) -> None:
        self.limit = limit
        self.open = 0
        self.lingering = 0  # refused connections waiting for the client to close first
        self._throttle = throttle or Throttle()

    def wrap(self, factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.BaseProtocol]:
        return lambda: _Counted(self, factory)

    def admit(self) -> bool:
        if self.open >= self.limit:
            count = self._throttle.due()
            if count is not None:
                log.warning(
                    "%d connection(s) refused with 503 in the last %g s: %d are open, MAILSVC_MAX_CONNECTIONS=%d",
                    count,
                    self._throttle.interval,
                    self.open,
                    self.limit,
                )
            return False
        self.open += 1
        return True


class _Counted(asyncio.Protocol):
    """One connection: refused with :data:`REFUSAL` over the cap, else handed to the server's own protocol.

    The server's protocol is built only once admitted, and every event is passed on to it unchanged.
    """

    def __init__(self, cap: ConnectionCap, factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self._cap = cap
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._closer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._cap.admit():
            self._inner = cast(asyncio.Protocol, self._factory())
            self._inner.connection_made(transport)
        else:
            self._refuse(cast(asyncio.Transport, transport))

    def _refuse(self, transport: asyncio.Transport) -> None:
        transport.write(REFUSAL)
        if self._cap.lingering >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        self._cap.lingering += 1
        transport.write_eof()  # the 503 is complete; the request, if any, is read and dropped until the client closes
        self._closer = asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._cap.open -= 1
            self._inner.connection_lost(exc)
        elif self._closer is not None:
            self._closer.cancel()
            self._cap.lingering -= 1

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None  # refused: None closes it

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
