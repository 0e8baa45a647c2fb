"""``create_app``: the service's app factory; the environment never reaches here, config does."""

from __future__ import annotations

import logging

from quart import Quart

from .config import MailConfig, ServiceConfig
from .extension import Mail

__all__ = ["create_app"]

log = logging.getLogger("mailsvc")


def create_app(mail_config: MailConfig, service: ServiceConfig | None = None) -> Quart:
    """Build the service app around a delivery config and a service config.

    Each part registers its own routes and lifespan hooks; order matters only in
    that the outbox (opened by ``runtime``) exists before workers and routes use it.
    """
    from . import devinbox, previews, runtime, web

    service = service or ServiceConfig()
    app = Quart(__name__, template_folder=str(service.templates.resolve()), static_folder=None)
    app.config.update(mail_config.to_mapping())
    app.config["MAIL_TEMPLATE_FOLDER"] = str(service.templates.resolve() / "email")
    app.extensions["mailsvc.service"] = service
    app.jinja_env.globals["dev_inbox"] = service.dev_mode  # pages link to /inbox only where it exists
    Mail(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    devinbox.register(app, service)  # dev SMTP server + /inbox (dev mode only)
    runtime.register(app, service)  # outbox open/close + in-process workers
    web.register(app, service)  # form, JSON API, errors, auth
    previews.register(app, service)  # /previews
    return app
