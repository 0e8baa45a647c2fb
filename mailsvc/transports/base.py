"""The transport contract, after Django's mail backends: open, send, close.

``send`` reports server answers in its :class:`SendResult` (a refused recipient
is data, not an exception) and raises :class:`DeliveryError` subclasses only when
the connection itself is unusable, so the pool knows to discard it.
``send_batch`` is the bulk form (``send_many``): a connection takes envelopes
from a shared :class:`SendQueue`; SMTP overrides it to pipeline messages back to back.
"""

from __future__ import annotations

import abc
import collections
from collections.abc import Sequence
from types import TracebackType

from ..errors import DeliveryError
from ..message import Envelope
from ..results import SendResult

__all__ = ["SendQueue", "Transport"]


class SendQueue:
    """The envelopes of one bulk send, shared by its connections, and their results by position.

    Why a shared queue: a free connection takes the next envelope, and a pipelining
    connection that breaks gives back the envelope it had not yet sent the content
    of, for the next connection to send (:meth:`give_back`).

    >>> q = SendQueue([])
    >>> q.take() is None
    True
    """

    def __init__(self, envelopes: Sequence[Envelope]) -> None:
        self.envelopes = envelopes
        self.results: list[SendResult | None] = [None] * len(envelopes)
        self._todo = collections.deque(range(len(envelopes)))
        self._retried: set[int] = set()

    def take(self) -> int | None:
        """The position of the next envelope to send, or None when there is none left."""
        return self._todo.popleft() if self._todo else None

    def envelope(self, i: int) -> Envelope:
        """The envelope taken as ``i``."""
        return self.envelopes[i]

    def put(self, i: int, result: SendResult) -> None:
        """Envelope ``i``'s result (the server's answers, or a failure of its connection)."""
        self.results[i] = result

    def give_back(self, i: int) -> None:
        """``i`` was taken but not sent (no content reached the server): it is next again."""
        self._todo.appendleft(i)

    def retry(self, i: int) -> bool:
        """Give back ``i``, whose content was not sent when its connection failed; False if it already was once.

        Why once: the failure may be the message's own doing (a server that hangs up on
        its MAIL); a second connection lost the same way fails it rather than looping.
        """
        if i in self._retried:
            return False
        self._retried.add(i)
        self.give_back(i)
        return True

    def fail(self, i: int, exc: DeliveryError) -> None:
        """Envelope ``i`` failed with its connection: every recipient gets the reason."""
        e = self.envelope(i)
        self.put(i, SendResult.all_failed(e.message_id, e.recipients, str(exc), exc.code))


class Transport(abc.ABC):
    """One logical connection to somewhere mail goes."""

    sent: int = 0  # messages sent since open(); the pool uses it for MAIL_MAX_EMAILS

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Close quietly; never raises, safe to call twice."""

    @abc.abstractmethod
    async def send(self, envelope: Envelope) -> SendResult: ...

    @property
    @abc.abstractmethod
    def is_open(self) -> bool: ...

    async def send_batch(self, queue: SendQueue, first: int, limit: int | None = None) -> None:
        """Send envelope ``first``, then more from ``queue``, until it is empty, this connection
        closed, or ``sent`` reached ``limit`` (``MAIL_MAX_EMAILS``).

        Every envelope taken (``first`` included) gets its result (:meth:`SendQueue.put`)
        or is given back, also when this raises: a :class:`DeliveryError` after the
        failed envelope's result is recorded, so the pool replaces the connection.
        This default sends one at a time; a transport that can overlap messages on
        one connection (SMTP with PIPELINING) overrides it.
        """
        i: int | None = first
        while i is not None:
            try:
                queue.put(i, await self.send(queue.envelope(i)))
            except DeliveryError as exc:
                queue.fail(i, exc)
                raise
            if not self.is_open or (limit is not None and self.sent >= limit):
                return
            i = queue.take()

    async def __aenter__(self) -> Transport:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
