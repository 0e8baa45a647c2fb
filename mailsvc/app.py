"""``create_app``: the service's app factory; the environment never reaches here, config does."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

import jinja2
from quart import Quart, has_request_context

from .config import MailConfig, ServiceConfig
from .errors import MailError
from .extension import Mail
from .metrics import Metrics
from .pagesafety import harden_html
from .services import Services
from .templatepaths import check_template_folder, email_folders, page_folders
from .tracing import _INSTALLED as TRACING_INSTALLED
from .tracing import asgi_middleware

__all__ = ["create_app"]

log = logging.getLogger("mailsvc")


def create_app(mail_config: MailConfig, service: ServiceConfig | None = None) -> Quart:
    """Build the service app around a delivery config and a service config.

    Each part registers its own routes and ``while_serving`` lifespan; they start in
    this order and stop in reverse: the dev inbox, delivery pointed at it, the outbox
    and workers (``runtime``). Every part is then on ``services(app)``.
    """
    from . import bounces, devinbox, previews, runtime, web

    service = service or ServiceConfig()
    check_template_folder(service.templates)  # a typo'd folder fails here, not as a 500 on every page
    app = Quart(__name__, static_folder=None)
    # Pages: the project's folder first, then the packaged ones (an installed wheel serves from anywhere).
    app.jinja_loader = jinja2.FileSystemLoader([str(f) for f in page_folders(service.templates)])
    app.config.update(mail_config.to_mapping())
    app.config["MAIL_TEMPLATE_FOLDER"] = [str(f) for f in email_folders(service.templates)]
    app.jinja_env.globals["dev_inbox"] = service.dev_mode  # pages link to /inbox only where it exists
    _one_line_start_refusals(app)
    parts = Services(service, Mail(app).state, metrics=Metrics())
    parts.install(app)
    app.after_request(harden_html)  # CSP, X-Frame-Options, nosniff, Referrer-Policy on every HTML page
    if TRACING_INSTALLED:  # the [otel] extra: a span per request once a provider is set (nothing without it)
        setattr(app, "asgi_app", asgi_middleware(app.asgi_app))  # noqa: B010 (an instance override)

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
    bounces.register(app, service)  # the bounce listener (MAILSVC_BOUNCE_LISTEN), once the outbox is open
    parts.web = web.register(app, service)  # form, JSON API, errors, auth
    parts.previews = previews.register(app, service)  # /previews (dev mode only)
    return app


def _one_line_start_refusals(app: Quart) -> None:
    """A part that refuses to start (our own error, outside any request) is logged as its one-line reason.

    Why: Quart logs a failed start with a full traceback, and the reason (``MAILSVC_DEV_SMTP_PORT:
    cannot listen ...``) already says what to change. Errors inside requests keep their traceback.
    """
    original = app.log_exception

    def log_exception(exc_info: Any) -> None:
        exc = exc_info[1]
        if isinstance(exc, MailError) and not has_request_context():
            log.error("cannot start: %s", exc)
            return
        original(exc_info)

    setattr(app, "log_exception", log_exception)  # noqa: B010 (an instance override of Quart's method)
