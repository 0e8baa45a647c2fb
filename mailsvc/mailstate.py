"""Per-app (or per-worker) delivery state: config, transport factory, pool, recorders, renderer.

Why apart from the Quart extension: the worker process and the CLI need the same
pool and the same build path without importing Quart; ``mailsvc.extension``
re-exports :class:`MailState` for code that found it there.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from pathlib import Path

from .config import MailConfig
from .envelopes import build_envelope
from .message import Envelope, Message
from .rendering import TemplateRenderer
from .results import RecipientResult, SendResult
from .signals import email_dispatched
from .transports.base import Transport
from .transports.factory import TransportFactory, factory_for
from .transports.pool import ConnectionPool

__all__ = ["MailState"]


class MailState:
    """Delivery state usable without any app (workers, CLI); the pool is made lazily, inside the loop.

    ``transport`` makes one connection from the config; unset, ``MAIL_TRANSPORT`` names it, else SMTP.
    A bad ``MAIL_TRANSPORT`` raises :class:`ConfigError` here, before anything is sent.

    >>> from mailsvc.transports import MemoryTransport
    >>> state = MailState(MailConfig(), transport=MemoryTransport)
    >>> type(state.transport()).__name__
    'MemoryTransport'
    """

    def __init__(
        self,
        config: MailConfig,
        templates: str | Path | Sequence[str | Path] | None = None,
        *,
        transport: TransportFactory | None = None,
    ) -> None:
        self.config = config
        self.recorders: list[list[Message]] = []
        # One pool per event loop: a pool's sockets belong to the loop that opened them.
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ConnectionPool] = weakref.WeakKeyDictionary()
        self._transport_factory = factory_for(config, transport)
        self.renderer = TemplateRenderer(templates) if templates is not None else None
        self.app: object | None = None  # the app whose extension made this state (the signal's ``app``)

    def transport(self) -> Transport:
        """A new, unopened connection (the pool calls this for each one it opens)."""
        return self._transport_factory(self.config)

    @property
    def pool(self) -> ConnectionPool:
        """The running loop's pool (made on first use in that loop; call it from a coroutine)."""
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None or pool.closed:
            pool = self._pools[loop] = ConnectionPool(self.transport, self.config.pool_size, self.config.max_emails)
        return pool

    async def aclose(self) -> None:
        """Close the running loop's pool (other loops' pools close when their loop ends)."""
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.aclose()

    def build(self, msg: Message) -> Envelope:
        return build_envelope(msg, self.config)

    def record(self, msg: Message) -> None:
        for rec in self.recorders:
            rec.append(msg)

    def dispatched(self, msg: Message) -> None:
        """Flask-Mail's ``email_dispatched`` signal, once the relay took the message (or it was suppressed)."""
        if email_dispatched.receivers:
            email_dispatched.send(msg, app=self.app)

    def suppressed(self, envelope: Envelope) -> SendResult:
        return SendResult(envelope.message_id, tuple(RecipientResult(r, "suppressed") for r in envelope.recipients))
