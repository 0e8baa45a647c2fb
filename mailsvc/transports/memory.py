"""A transport that keeps envelopes in a list: a real transport for tests, swapped in, not patched.

Plug it in with ``Mail(app, transport=lambda config: MemoryTransport(outbox=sent))`` to read what
was sent, or ``MAIL_TRANSPORT=mailsvc.transports.memory:MemoryTransport`` to deliver into nowhere
(each connection keeps its own list): the whole path runs, building and pooling included, with no socket.
"""

from __future__ import annotations

from ..config import MailConfig
from ..message import Envelope
from ..results import RecipientResult, SendResult
from .base import Transport

__all__ = ["MemoryTransport"]


class MemoryTransport(Transport):
    """Accepts everything and appends it to ``outbox``.

    It takes the :class:`MailConfig` like every transport factory (and ignores it).

    >>> sent: list[Envelope] = []
    >>> MemoryTransport(outbox=sent).outbox is sent
    True
    """

    def __init__(self, config: MailConfig | None = None, *, outbox: list[Envelope] | None = None) -> None:
        self.config = config
        self.outbox: list[Envelope] = outbox if outbox is not None else []
        self._open = False

    async def open(self) -> None:
        self._open = True
        self.sent = 0

    async def close(self) -> None:
        self._open = False

    @property
    def is_open(self) -> bool:
        return self._open

    async def send(self, envelope: Envelope) -> SendResult:
        self.outbox.append(envelope)
        self.sent += 1
        return SendResult(
            envelope.message_id, tuple(RecipientResult(r, "delivered", 250, "OK") for r in envelope.recipients)
        )
