"""The service's long-lived delivery resources, tied to the Quart app's lifespan.

Why here: the outbox connection and the in-process workers belong to the loop
hypercorn runs the app in, so they are opened in ``before_serving`` and closed
in ``after_serving`` (Quart's lifespan), never at import time. Other parts find
the outbox at ``app.extensions["mailsvc.outbox"]``.
"""

from __future__ import annotations

import logging
from typing import Any

from quart import Quart

from .config import ServiceConfig
from .dburl import parse_database_url
from .outbox import Outbox, open_outbox

__all__ = ["OUTBOX_KEY", "WORKERS_KEY", "outbox_for", "register"]

OUTBOX_KEY = "mailsvc.outbox"
WORKERS_KEY = "mailsvc.workers"
log = logging.getLogger("mailsvc.runtime")


def outbox_options(service: ServiceConfig) -> dict[str, Any]:
    """The outbox settings carried by the service config."""
    options: dict[str, Any] = {"max_pending": service.max_pending, "idempotency_ttl": service.idempotency_ttl}
    if service.retention_days and parse_database_url(service.database_url).kind == "postgresql":
        options["retention_days"] = service.retention_days  # the PostgreSQL outbox purges old final mail itself
    return options


def outbox_for(app: Quart) -> Outbox:
    """The app's open outbox (raises a clear error outside the app's lifespan)."""
    try:
        outbox: Outbox = app.extensions[OUTBOX_KEY]
    except KeyError:
        raise RuntimeError(
            "the outbox is opened in before_serving: run the app (or async with app.test_app())"
        ) from None
    return outbox


def register(app: Quart, service: ServiceConfig) -> None:
    """Open the outbox (and start ``service.workers`` delivery workers) while the app serves."""

    @app.before_serving
    async def _open_outbox() -> None:
        outbox = open_outbox(service.database_url, **outbox_options(service))
        await outbox.open()
        app.extensions[OUTBOX_KEY] = outbox
        if service.workers > 0:
            from .worker import WorkerGroup

            # Read the Mail state's config now, not at register time: the dev inbox may
            # have rewritten its port in an earlier before_serving hook.
            group = WorkerGroup.from_service(outbox, app.extensions["mailsvc"].config, service)
            await group.start()
            app.extensions[WORKERS_KEY] = group
            log.info("started %d in-process delivery worker(s)", service.workers)

    @app.after_serving
    async def _close_outbox() -> None:
        group = app.extensions.pop(WORKERS_KEY, None)
        if group is not None:
            await group.stop()
        outbox = app.extensions.pop(OUTBOX_KEY, None)
        if outbox is not None:
            await outbox.close()
