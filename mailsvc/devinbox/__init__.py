"""The dev inbox: in dev mode (no ``MAIL_SERVER``), mail is delivered to an SMTP server of our own.

Why: a newcomer's first run must work with nothing configured and *show* the
mail. The whole production path still runs (outbox, worker, aiosmtplib, SMTP);
only the relay at the end is ours, on 127.0.0.1, storing what it receives in
SQLite beside the outbox. Other local apps can point at it too. Its routes
exist only in dev mode, so with a real relay they answer 404.

    ``register(app, service)``   start/stop with the app's lifespan, add /inbox and /api/inbox
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from quart import Quart

from ..config import ServiceConfig
from . import api, pages
from .smtpd import DevSMTPServer
from .store import InboxStore, inbox_path_for

__all__ = ["DevInbox", "register"]

log = logging.getLogger("mailsvc.devinbox")


@dataclass(frozen=True, slots=True)
class DevInbox:
    """What the routes need (``services(app).dev_inbox``), and where it listens once it serves."""

    store: InboxStore
    server: DevSMTPServer

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` it bound; the port is known only while it serves (0 in tests means OS-chosen)."""
        if not self.server.port:
            raise RuntimeError("the dev inbox is not serving yet: its port is known once the app serves")
        return "127.0.0.1", self.server.port


def register(app: Quart, service: ServiceConfig) -> DevInbox | None:
    """In dev mode: serve SMTP and the store while the app serves, and add the routes.

    The inbox publishes the port it bound (:attr:`DevInbox.address`); pointing delivery
    at it is the app's business (``create_app``), not this module's.
    """
    if not service.dev_mode:
        return None
    store = InboxStore(inbox_path_for(service.database_url), service.dev_inbox_max)
    inbox = DevInbox(store, DevSMTPServer(store, service.dev_smtp_port))

    @app.while_serving
    async def _serve() -> AsyncGenerator[None, None]:
        await store.open()
        try:
            port = await inbox.server.start()
        except BaseException:
            await store.close()
            raise
        log.warning(
            "dev mode: no MAIL_SERVER is configured, so mail is delivered to the built-in dev inbox "
            "(SMTP on 127.0.0.1:%d, captured mail at /inbox, kept in %s). The service runs open, "
            "without a relay or sign-in, for local development only.",
            port,
            store.path,
        )
        try:
            yield
        finally:  # registered before the outbox and workers, so stopped after them: they may send to us until then
            await inbox.server.stop()
            await store.close()

    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    return inbox
