"""The service's delivery resources (the outbox and in-process workers), tied to the app's lifespan.

Why ``while_serving``: the outbox connection and the workers belong to the loop
hypercorn runs the app in, so they are opened when the app starts serving and
closed when it stops, never at import time; as one generator per part, Quart
tears them down in reverse order of start by itself (workers stop before the
outbox closes, and before the dev inbox they may still be sending to).
Other parts find the open outbox at ``services(app).outbox``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator

from quart import Quart

from .config import ServiceConfig
from .metricsserver import MetricsServer
from .outbox import Outbox
from .serviceoutbox import dev_leftovers, service_outbox
from .services import services
from .webhooks import WebhookDispatcher, backlog_source
from .worker import WorkerGroup
from .workerprocess import WorkerProcess

__all__ = ["outbox_for", "register"]

log = logging.getLogger("mailsvc.runtime")


def outbox_for(app: Quart) -> Outbox:
    """The app's open outbox (:class:`~mailsvc.services.OutboxNotOpenError` outside the app's lifespan)."""
    return services(app).open_outbox()


def _report_dev_leftovers(service: ServiceConfig, relay: str) -> None:
    left = dev_leftovers(service.database_url)
    if left is not None:
        path, count = left
        log.warning(
            "%d message(s) accepted in dev mode remain undelivered in %s; they are not sent to %s "
            "(dev mail stays in dev: delete the file, or run without MAIL_SERVER to see them in the dev inbox)",
            count,
            path,
            relay,
        )


def register(app: Quart, service: ServiceConfig) -> None:
    """Open the outbox (and start ``service.workers`` delivery workers) while the app serves."""

    @app.while_serving
    async def _outbox_and_workers() -> AsyncGenerator[None, None]:
        parts = services(app)
        if not service.dev_mode:
            _report_dev_leftovers(service, parts.mail.config.server)
        outbox = service_outbox(service)
        await outbox.open()
        parts.outbox = outbox
        metrics_server = None
        child: WorkerProcess | None = None
        try:
            if parts.metrics is not None:
                parts.metrics.watch(outbox=outbox)
                if service.metrics_bind is not None:  # /metrics on its own address (the app's route answers 404)
                    metrics_server = MetricsServer(parts.metrics, service.metrics_bind)
                    await metrics_server.start()
            if service.workers > 0 and service.worker_process:
                child = WorkerProcess(outbox, service.worker_metrics_bind)
                await child.start()
                parts.worker_process = child
            elif service.workers > 0:
                # The Mail state's config as it is now, not at register time: the dev inbox's
                # bound port is known only once it serves.
                group = WorkerGroup.from_service(outbox, parts.mail.config, service, metrics=parts.metrics)
                await group.start()
                parts.workers = group
                log.info("started %d in-process delivery worker(s)", service.workers)
            if service.webhooks and outbox.events is not None:  # its own task: a dead endpoint never slows mail
                parts.webhooks = WebhookDispatcher(outbox, service)
                await parts.webhooks.start()
                if parts.metrics is not None and not parts.cache.get("webhook_backlog"):
                    parts.metrics.add_source(backlog_source(outbox.events))
                    parts.cache["webhook_backlog"] = True
                log.info("webhooks: delivering events to %s", ", ".join(e.name for e in service.webhooks))
            yield
        finally:
            if parts.webhooks is not None:
                await parts.webhooks.stop()
                parts.webhooks = None
            if metrics_server is not None:
                await metrics_server.stop()
            if parts.metrics is not None:
                parts.metrics.unwatch()
            if parts.workers is not None:
                await parts.workers.stop()
                parts.workers = None
            if child is not None:
                parts.worker_process = None
                await child.stop()
            parts.outbox = None
            await outbox.close()
