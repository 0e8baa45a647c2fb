"""A bounded pool of reused transports for concurrent sends.

Why: opening SMTP (and TLS, and AUTH) costs several round trips; reusing at most
``MAIL_POOL_SIZE`` connections keeps a bulk send fast without flooding the relay.
A connection that raised is closed and replaced, never handed out again.

A pool belongs to the event loop it was made in (its sockets do). So that code
which calls ``asyncio.run(mail.send(msg))`` again and again (scripts, Celery
tasks, threads) leaks nothing, the first connection also starts a small async
generator in that loop: ``asyncio.run`` closes every live async generator before it
closes its loop (``loop.shutdown_asyncgens``), and closing this one closes the pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from ..errors import DeliveryError
from ..message import Envelope
from ..results import SendResult
from .base import SendQueue, Transport

__all__ = ["ConnectionPool"]


class ConnectionPool:
    """At most ``size`` transports from ``factory``; create it inside the running loop."""

    def __init__(self, factory: Callable[[], Transport], size: int, max_per_connection: int | None = None) -> None:
        self._factory = factory
        self._size = size
        self._max = max_per_connection
        self._idle: list[Transport] = []
        self._sem = asyncio.Semaphore(size)
        self._all: set[Transport] = set()
        self._closed = False
        self._lifetime: AsyncGenerator[None, None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    async def _until_loop_ends(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:  # the loop is shutting down (asyncio.run's end) or the pool was closed
            await self.aclose()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Transport]:
        if self._closed:
            raise RuntimeError("connection pool is closed")
        if self._lifetime is None:
            self._lifetime = self._until_loop_ends()
            await self._lifetime.__anext__()  # registered with the running loop from here on
        async with self._sem:
            conn = self._idle.pop() if self._idle else self._factory()
            self._all.add(conn)
            ok = False
            try:
                if self._max is not None and conn.sent >= self._max:
                    await conn.close()
                if not conn.is_open:
                    await conn.open()
                yield conn
                ok = True
            finally:
                if ok and conn.is_open and not self._closed:
                    self._idle.append(conn)
                else:
                    self._all.discard(conn)
                    await conn.close()

    async def send(self, envelope: Envelope) -> SendResult:
        """Send on a pooled connection; a connection-level failure becomes a failed result."""
        try:
            async with self.connection() as conn:
                return await conn.send(envelope)
        except DeliveryError as exc:
            return SendResult.all_failed(envelope.message_id, envelope.recipients, str(exc), exc.code)

    async def send_many(self, envelopes: Sequence[Envelope]) -> list[SendResult]:
        """``[await self.send(e) for e in envelopes]``, concurrently over at most ``size`` connections.

        Why not a task per envelope: each would queue on the semaphore and take and
        return a connection for one message, which costs more CPU than building it.
        Here each worker holds a connection and hands it the shared queue
        (``Transport.send_batch``: SMTP pipelines the messages back to back).
        Every envelope is tried once, as with :meth:`send`: a connection-level
        failure fails that envelope only, and the worker goes on with a fresh
        connection (also after ``MAIL_MAX_EMAILS``). An envelope a broken
        connection had not yet sent the content of is sent on the next one.
        """
        queue = SendQueue(envelopes)

        async def worker() -> None:
            while (i := queue.take()) is not None:
                try:
                    await self.send_from(queue, i)
                except DeliveryError:
                    pass  # that envelope has its failed result; the next goes on a fresh connection

        await asyncio.gather(*(worker() for _ in range(min(self._size, len(envelopes)))))
        assert all(r is not None for r in queue.results)
        return queue.results  # type: ignore[return-value]

    async def send_from(self, queue: SendQueue, first: int | None = None) -> None:
        """Envelope ``first`` and what follows it from ``queue``, on one pooled connection (``send_batch``).

        ``first`` None: the first is taken from ``queue`` once the connection is ready, so a queue that
        decides at :meth:`SendQueue.take` whether an envelope may go (the worker's feed) decides at the
        last moment, not before a wait for a free connection. Every envelope taken gets its result or goes
        back to ``queue``, also when this raises :class:`DeliveryError` (the connection failed, or could not
        be opened: that fails the first envelope, taken then if it was not yet).
        """
        entered = False
        try:
            async with self.connection() as conn:
                entered = True
                if first is None and (first := queue.take()) is None:
                    return
                await conn.send_batch(queue, first, self._max)
        except DeliveryError as exc:
            if not entered and (first is not None or (first := queue.take()) is not None):
                queue.fail(first, exc)  # the connection could not be opened: that fails the envelope it was for
            raise

    async def aclose(self) -> None:
        self._closed = True
        conns, self._idle = list(self._all), []
        self._all.clear()
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
