"""The rest of a request body its handler did not read: drained when small, else the connection closed cleanly.

Why (issue 13, finding 10): hypercorn keeps an HTTP/1.1 connection for the next request only when the
request's body was read to its end. A handler that answers before reading it (a 401 for a bad key, a 413
from the ``Content-Length`` alone) leaves the rest unread, and hypercorn then closes the connection right
after the answer *without* saying ``Connection: close``. A client that had already sent its next request on
that connection got no answer at all; and a socket closed with unread data is reset by the kernel, which can
destroy the answer itself before the client has read it.

So, as Go's ``net/http`` does: when the answer starts and the request body has not ended, up to
:data:`DRAIN_BYTES` more of it are read and thrown away, for at most :data:`DRAIN_SECONDS`, and the connection
stays usable. A larger or slower body gets ``Connection: close`` on the answer (the client knows to open a new
connection for its next request); once the answer is written, the body is still thrown away for up to
:data:`LINGER_SECONDS` before the answer ends, so that hypercorn's close does not reset the connection under
the client's feet.

This assumes the app answers only once it is done with the body, as Quart does (it sends a response after the
handler returned). :class:`KeepAliveConnection` plugs it into Quart (``app.asgi_http_class``), so it runs under
``mailsvc serve``, ``hypercorn asgi:app`` and the test client alike.
"""

from __future__ import annotations

import asyncio

from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    HTTPScope,
)
from quart.asgi import ASGIHTTPConnection

__all__ = ["DRAIN_BYTES", "DRAIN_SECONDS", "LINGER_SECONDS", "KeepAliveConnection", "RequestBody", "UnreadBodyAnswer"]

DRAIN_BYTES = 256 * 1024  # Go's net/http reads up to the same before giving up on keeping the connection
DRAIN_SECONDS = 2.0  # a body already on its way arrives well within this; a slower one is not worth waiting for
LINGER_SECONDS = 2.0  # how long the rest of a refused body is thrown away before the connection closes
_HTTP1 = ("1.0", "1.1")


def declared_length(scope: HTTPScope) -> int | None:
    """The request's ``Content-Length`` (None when chunked, absent or unreadable)."""
    for name, value in scope["headers"]:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RequestBody:
    """The request's ``receive``, counting what has passed and whether the body has ended.

    Quart reads ``receive`` from a task of its own while the handler runs; the lock makes the drain below take
    turns with it rather than both waiting on the same queue, so whoever gets the body's last part, both see it.
    """

    def __init__(self, receive: ASGIReceiveCallable, declared: int | None) -> None:
        self._receive = receive
        self._lock = asyncio.Lock()
        self.declared = declared
        self.received = 0
        self.ended = False  # the last part arrived, or the client went away

    async def receive(self) -> ASGIReceiveEvent:
        if self.ended:  # nothing left for discard() to take turns on (Quart's wait for the disconnect)
            return await self._receive()
        async with self._lock:
            message = await self._receive()
            self._note(message)
        return message

    def _note(self, message: ASGIReceiveEvent) -> None:
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.ended = self.ended or not message.get("more_body", False)
        elif message["type"] == "http.disconnect":
            self.ended = True

    async def discard(self, max_bytes: int | None, seconds: float) -> bool:
        """Read and drop the rest; True if it ended within ``max_bytes`` more (None: any) and ``seconds``."""
        limit = None if max_bytes is None else self.received + max_bytes
        try:
            async with asyncio.timeout(seconds):
                while not self.ended and (limit is None or self.received <= limit):
                    async with self._lock:
                        if not self.ended:
                            self._note(await self._receive())
        except TimeoutError:
            pass
        return self.ended

    @property
    def small_enough_to_drain(self) -> bool:
        return self.declared is None or self.declared - self.received <= DRAIN_BYTES


class UnreadBodyAnswer:
    """The app's ``send``: keeps the connection usable after an answer given before the body was read."""

    def __init__(self, body: RequestBody, send: ASGISendCallable) -> None:
        self._body = body
        self._send = send
        self._closing = False

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "http.response.start" and not self._body.ended:
            await self._start(message)
        elif message["type"] == "http.response.body" and self._closing and not message.get("more_body", False):
            await self._end_after_linger(message)
        else:
            await self._send(message)

    async def _start(self, message: HTTPResponseStartEvent) -> None:
        # A 408 means the client was already too slow with this body: waiting for the rest would reward it.
        worth_it = message["status"] != 408 and self._body.small_enough_to_drain
        drained = worth_it and await self._body.discard(DRAIN_BYTES, DRAIN_SECONDS)
        if not drained:
            self._closing = True
            headers = list(message.get("headers", ()))
            if not any(name.lower() == b"connection" for name, _ in headers):
                headers.append((b"connection", b"close"))
            message = {**message, "headers": headers}
        await self._send(message)

    async def _end_after_linger(self, message: HTTPResponseBodyEvent) -> None:
        """Write the answer's last bytes, throw the body away for a while, then end (and hypercorn closes)."""
        if message.get("body"):
            await self._send({"type": "http.response.body", "body": message["body"], "more_body": True})
        await self._body.discard(None, LINGER_SECONDS)
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})


class KeepAliveConnection(ASGIHTTPConnection):
    """Quart's HTTP connection with :class:`UnreadBodyAnswer` around it (HTTP/1 only: HTTP/2 streams end alone).

    >>> from quart import Quart
    >>> app = Quart(__name__)
    >>> app.asgi_http_class = KeepAliveConnection
    """

    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if self.scope.get("http_version") not in _HTTP1:
            await super().__call__(receive, send)
            return
        body = RequestBody(receive, declared_length(self.scope))
        await super().__call__(body.receive, UnreadBodyAnswer(body, send).send)
