"""``create_app``: the service's app factory; the environment never reaches here, config does."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator

import jinja2
from quart import Quart

from .config import MailConfig, ServiceConfig
from .extension import Mail
from .pagesafety import harden_html
from .services import Services
from .templatepaths import check_template_folder, email_folders, page_folders

__all__ = ["create_app"]

log = logging.getLogger("mailsvc")


def create_app(mail_config: MailConfig, service: ServiceConfig | None = None) -> Quart:
    """Build the service app around a delivery config and a service config.

    Each part registers its own routes and ``while_serving`` lifespan; they start in
    this order and stop in reverse: the dev inbox, delivery pointed at it, the outbox
    and workers (``runtime``). Every part is then on ``services(app)``.
    """
    from . import devinbox, previews, runtime, web

    service = service or ServiceConfig()
    check_template_folder(service.templates)  # a typo'd folder fails here, not as a 500 on every page
    app = Quart(__name__, static_folder=None)
    # Pages: the project's folder first, then the packaged ones (an installed wheel serves from anywhere).
    app.jinja_loader = jinja2.FileSystemLoader([str(f) for f in page_folders(service.templates)])
    app.config.update(mail_config.to_mapping())
    app.config["MAIL_TEMPLATE_FOLDER"] = [str(f) for f in email_folders(service.templates)]
    app.jinja_env.globals["dev_inbox"] = service.dev_mode  # pages link to /inbox only where it exists
    parts = Services(service, Mail(app).state)
    parts.install(app)
    app.after_request(harden_html)  # CSP, X-Frame-Options, nosniff, Referrer-Policy on every HTML page

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    parts.dev_inbox = devinbox.register(app, service)  # dev SMTP server + /inbox (dev mode only)
    if parts.dev_inbox is not None:
        inbox = parts.dev_inbox

        @app.while_serving
        async def _deliver_to_dev_inbox() -> AsyncGenerator[None, None]:
            # The inbox publishes the port it bound once it serves; delivery (the workers
            # started next, Mail.send) goes there.
            host, port = inbox.address
            parts.mail.config = parts.mail.config.model_copy(update={"server": host, "port": port})
            yield

    runtime.register(app, service)  # outbox open/close + in-process workers
    parts.web = web.register(app, service)  # form, JSON API, errors, auth
    parts.previews = previews.register(app, service)  # /previews (dev mode only)
    return app
