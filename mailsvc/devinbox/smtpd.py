"""The embedded SMTP server of dev mode: aiosmtpd in the app's own event loop.

Why in-loop (``loop.create_server``) rather than aiosmtpd's threaded
``Controller``: it starts and stops with the Quart lifespan, needs no thread,
and binding port 0 lets the OS pick a free port that we read back (tests run
many apps side by side without racing for ports).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from ..errors import ConfigError, OutboxError
from .store import InboxStore

__all__ = ["DevSMTPServer"]

log = logging.getLogger("mailsvc.devinbox")

MAX_MESSAGE_BYTES = 50 * 1024 * 1024


class _StoringHandler:
    """aiosmtpd handler: every message accepted at DATA is stored before the 250 reply."""

    def __init__(self, store: InboxStore) -> None:
        self.store = store

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content
        if raw is None:
            raw = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content or "").encode()
        try:
            new_id = await self.store.add(envelope.mail_from or "", list(envelope.rcpt_tos), raw)
        except OutboxError as exc:  # a 4xx keeps the sending worker retrying: nothing is lost
            log.error("dev inbox could not store a message: %s", exc)
            return "451 4.3.0 dev inbox could not store the message; try again"
        log.info("dev inbox captured message %s for %d recipient(s)", new_id, len(envelope.rcpt_tos))
        return "250 2.0.0 OK: captured by the mailsvc dev inbox"


class DevSMTPServer:
    """Listens on 127.0.0.1:``port`` (0 = OS-chosen); :attr:`port` is the real one once started."""

    def __init__(self, store: InboxStore, port: int, host: str = "127.0.0.1") -> None:
        self.store = store
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        handler = _StoringHandler(self.store)

        def factory() -> SMTP:
            return SMTP(
                handler,
                hostname="mailsvc-dev-inbox",
                data_size_limit=MAX_MESSAGE_BYTES,
                enable_SMTPUTF8=True,
                loop=loop,
            )

        try:
            self._server = await loop.create_server(factory, host=self.host, port=self.requested_port)
        except OSError as exc:
            raise ConfigError(
                "MAILSVC_DEV_SMTP_PORT",
                f"cannot listen on {self.host}:{self.requested_port} ({exc.strerror}); "
                "choose another port or stop what is using it",
            ) from exc
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
