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
    """What the routes need, kept on ``app.extensions["mailsvc.devinbox"]``."""

    store: InboxStore
    server: DevSMTPServer


def register(app: Quart, service: ServiceConfig) -> None:
    """In dev mode: open the store and start SMTP before serving, stop both after; add the routes."""
    if not service.dev_mode:
        return
    store = InboxStore(inbox_path_for(service.database_url), service.dev_inbox_max)
    server = DevSMTPServer(store, service.dev_smtp_port)
    app.extensions["mailsvc.devinbox"] = DevInbox(store, server)

    async def start() -> None:
        await store.open()
        try:
            port = await server.start()
        except BaseException:
            await store.close()
            raise
        # Deliver to the port really bound (0 in tests means OS-chosen).
        state = app.extensions["mailsvc"]
        state.config = state.config.model_copy(update={"server": "127.0.0.1", "port": port})
        # Stop after every other part (workers may be sending to us until they stop): our
        # stop hook goes last in the after-serving list, whatever registered before us.
        if stop in app.after_serving_funcs:
            app.after_serving_funcs.remove(stop)
        app.after_serving_funcs.append(stop)
        log.warning(
            "dev mode: no MAIL_SERVER is configured, so mail is delivered to the built-in dev inbox "
            "(SMTP on 127.0.0.1:%d, captured mail at /inbox, kept in %s). The service runs open, "
            "without a relay or sign-in, for local development only.",
            port,
            store.path,
        )

    async def stop() -> None:
        await server.stop()
        await store.close()

    app.before_serving(start)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
