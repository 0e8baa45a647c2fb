"""Asynchronous bounces and complaints: reports sent to the VERP return path, recorded in the outbox.

With ``MAILSVC_BOUNCE_DOMAIN``, every message goes out with the envelope sender
``bounces+<token>@<domain>`` (:mod:`mailsvc.verp`, one SMTP transaction per recipient), so the
reports that come back days later name their message and recipient. This package receives them:

    ``reports``    what a report says (RFC 3464 DSN, RFC 5965 ARF, plain-text bounce)
    ``listener``   the SMTP server that accepts them (only for our return paths) and records them
    ``register``   the listener inside ``mailsvc serve`` when ``MAILSVC_BOUNCE_LISTEN`` is set;
                   ``mailsvc bounces --bind`` runs it as a process of its own
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator

from quart import Quart

from ..config import ServiceConfig, split_bind
from ..outbox import Outbox
from ..services import services
from ..verp import ReturnPath
from .listener import BounceServer

__all__ = ["BounceServer", "register", "server_for"]

log = logging.getLogger("mailsvc.bounces")


def server_for(outbox: Outbox, service: ServiceConfig, bind: str, setting: str) -> BounceServer:
    """The listener for ``service``'s bounce domain on ``bind`` (``host:port``); ``setting`` names ``bind``."""
    if service.bounce_domain is None or service.web.secret_key is None:
        raise ValueError("MAILSVC_BOUNCE_DOMAIN: the bounce listener needs the bounce domain (and MAILSVC_SECRET_KEY)")
    host, port = split_bind(bind, setting)
    return_path = ReturnPath(service.web.secret_key.get_secret_value(), service.bounce_domain)
    return BounceServer(outbox, return_path, host, port, max_bytes=service.bounce_max_bytes, setting=setting)


def register(app: Quart, service: ServiceConfig) -> None:
    """With ``MAILSVC_BOUNCE_LISTEN``: the listener, while the app serves (registered after the outbox opens)."""
    if service.bounce_listen is None:
        return
    bind = service.bounce_listen

    @app.while_serving
    async def _listen() -> AsyncGenerator[None, None]:
        parts = services(app)
        server = server_for(parts.open_outbox(), service, bind, "MAILSVC_BOUNCE_LISTEN")
        await server.start()
        parts.bounces = server
        try:
            yield
        finally:  # stopped before the outbox closes (while_serving parts stop in reverse order)
            parts.bounces = None
            await server.stop()
