"""A transport that keeps envelopes in a list: a real transport for tests, swapped in, not patched."""

from __future__ import annotations

from ..message import Envelope
from ..results import RecipientResult, SendResult
from .base import Transport

__all__ = ["MemoryTransport"]


class MemoryTransport(Transport):
    """Accepts everything and appends it to ``outbox``."""

    def __init__(self, outbox: list[Envelope] | None = None) -> None:
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
