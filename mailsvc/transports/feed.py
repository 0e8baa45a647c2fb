"""Envelopes that arrive one at a time (a worker's claimed messages), sent back to back on pooled connections.

Why: the delivery worker used to send each claimed message on its own: a connection
taken from the pool, a pipelined exchange of two round trips, the connection given
back. Every message cost two writes, two event-loop wake-ups and a task switch on
each of them, and that, not the relay, bounded the service's bulk rate. A
:class:`SendFeed` is a :class:`SendQueue` that keeps being fed: up to the pool's size
of connections each take the next envelope as soon as they wrote the previous one's
content (``Transport.send_batch``; SMTP pipelines across messages, ``pipestream``),
and whoever submitted an envelope awaits its result. A connection whose feed ran dry
goes back to the pool; the next submit starts one again.

What the submitter decides stays with it: ``admit`` is asked when a connection that is
ready takes the envelope, the last moment before it may reach the wire (a worker refuses there
when its relay is paused, it is stopping, or the message's lease is too old), and
``trouble`` hears of every connection that failed. The result comes with whether it is
such a failure (the relay's, to be retried) or the server's answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ..errors import DeliveryError
from ..message import Envelope
from ..results import SendResult
from .base import SendQueue
from .pool import ConnectionPool

__all__ = ["Gone", "SendFeed", "Sent"]

log = logging.getLogger("mailsvc.transports")

T = TypeVar("T")

Sent = tuple[SendResult, bool]  # the result, and True when it is its connection's failure rather than answers


class Gone(Exception):
    """The envelope was not sent and will not be: ``admit`` refused it, or the feed closed before it was taken."""


class _Item(Generic[T]):
    __slots__ = ("envelope", "tag", "result")

    def __init__(self, envelope: Envelope, tag: T, result: asyncio.Future[Sent]) -> None:
        self.envelope = envelope
        self.tag = tag
        self.result = result


class SendFeed(SendQueue, Generic[T]):
    """Submitted envelopes, sent by at most the pool's size of connections at once.

    ``admit(tag)``: may this envelope go on the wire now (False: its submitter gets :class:`Gone`).
    ``trouble(exc)``: a connection failed (its envelope in flight has a failed result already).
    Create it in the running loop whose pool it uses; :meth:`close` when done.
    """

    def __init__(
        self,
        pool: Callable[[], ConnectionPool],
        size: int,
        admit: Callable[[T], bool],
        trouble: Callable[[DeliveryError], None],
    ) -> None:
        super().__init__(())
        self._pool = pool
        self._size = size
        self._admit = admit
        self._trouble = trouble
        self._items: dict[int, _Item[T]] = {}
        self._seq = 0
        self._runners: set[asyncio.Task[None]] = set()
        self._closed = False

    def submit(self, envelope: Envelope, tag: T) -> asyncio.Future[Sent]:
        """Queue ``envelope``; the future is its result, or raises :class:`Gone`. Cancelling it withdraws it
        unless a connection has already taken it (then it is sent, and its result dropped)."""
        if self._closed:
            raise Gone("the feed is closed")
        result: asyncio.Future[Sent] = asyncio.get_running_loop().create_future()
        key, self._seq = self._seq, self._seq + 1
        self._items[key] = _Item(envelope, tag, result)
        self._todo.append(key)
        if len(self._runners) < self._size:
            runner = asyncio.create_task(self._run())
            self._runners.add(runner)
            runner.add_done_callback(self._runners.discard)
        return result

    # -- the SendQueue side, for Transport.send_batch ---------------------------
    def take(self) -> int | None:
        while self._todo:
            key = self._todo.popleft()
            item = self._items.get(key)
            if item is None:
                continue
            if item.result.done():  # withdrawn (its submitter was cancelled) before any connection took it
                del self._items[key]
                continue
            if self._closed or not self._admit(item.tag):
                del self._items[key]
                item.result.set_exception(Gone("not admitted"))
                continue
            return key
        return None

    def envelope(self, i: int) -> Envelope:
        return self._items[i].envelope

    def put(self, i: int, result: SendResult) -> None:
        self._settle(i, (result, False))

    def fail(self, i: int, exc: DeliveryError) -> None:
        e = self._items[i].envelope
        self._settle(i, (SendResult.all_failed(e.message_id, e.recipients, str(exc), exc.code), True))

    def _settle(self, i: int, sent: Sent) -> None:
        item = self._items.pop(i, None)
        self._retried.discard(i)
        if item is not None and not item.result.done():
            item.result.set_result(sent)

    # -- connections -------------------------------------------------------------
    async def _run(self) -> None:
        """One connection's turn: send what the feed holds until it is empty, a new connection after a failure."""
        lane = _Lane(self)
        try:
            while self._todo:  # each envelope is taken (and admitted) only once a connection is ready for it
                try:
                    await self._pool().send_from(lane)
                except DeliveryError as exc:
                    self._trouble(exc)
        except BaseException as exc:
            # A bug (or this task cancelled): what this connection took must not wait forever. The one whose
            # content may be on the wire gets a failed result, as the connection's failure; the rest too.
            error = DeliveryError(f"internal error while sending: {exc!r}")
            for key in list(lane.held):
                if key in self._items:
                    self.fail(key, error)
            if not isinstance(exc, Exception):
                raise
            log.exception("a connection of the send feed failed unexpectedly")

    async def close(self) -> None:
        """Refuse new envelopes; those not yet taken get :class:`Gone`; wait for the connections to finish."""
        self._closed = True
        while self._todo:
            item = self._items.pop(self._todo.popleft(), None)
            if item is not None and not item.result.done():
                item.result.set_exception(Gone("the feed closed"))
        if self._runners:
            await asyncio.gather(*self._runners, return_exceptions=True)


class _Lane(SendQueue):
    """One connection's view of the feed: the keys it took and has not yet settled or given back."""

    def __init__(self, feed: SendFeed[Any]) -> None:
        super().__init__(())
        self._feed = feed
        self.held: set[int] = set()

    def take(self) -> int | None:
        key = self._feed.take()
        if key is not None:
            self.held.add(key)
        return key

    def envelope(self, i: int) -> Envelope:
        return self._feed.envelope(i)

    def put(self, i: int, result: SendResult) -> None:
        self.held.discard(i)
        self._feed.put(i, result)

    def fail(self, i: int, exc: DeliveryError) -> None:
        self.held.discard(i)
        self._feed.fail(i, exc)

    def give_back(self, i: int) -> None:
        self.held.discard(i)
        self._feed.give_back(i)

    def retry(self, i: int) -> bool:
        self.held.discard(i)
        return self._feed.retry(i)  # once per envelope, whichever connection tries it again
