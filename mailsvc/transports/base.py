"""The transport contract, after Django's mail backends: open, send, close.

``send`` reports server answers in its :class:`SendResult` (a refused recipient
is data, not an exception) and raises :class:`DeliveryError` subclasses only when
the connection itself is unusable, so the pool knows to discard it.
"""

from __future__ import annotations

import abc
from types import TracebackType

from ..message import Envelope
from ..results import SendResult

__all__ = ["Transport"]


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

    async def __aenter__(self) -> Transport:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
