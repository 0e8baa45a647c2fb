"""The outbox a :class:`ServiceConfig` names, with the service's limits: Quart-free.

Why here and not in ``runtime.py``: the CLI (``mailsvc send``, ``bulk``, ``worker``)
opens the outbox the service opens, and ``mailsvc worker`` must run without
importing Quart. ``runtime`` (the app's lifespan) opens it through here too.
"""

from __future__ import annotations

from typing import Any

from .config import ServiceConfig
from .dburl import parse_database_url
from .outbox import Outbox, open_outbox

__all__ = ["outbox_options", "service_outbox"]


def outbox_options(service: ServiceConfig) -> dict[str, Any]:
    """The outbox settings carried by the service config."""
    options: dict[str, Any] = {"max_pending": service.max_pending, "idempotency_ttl": service.idempotency_ttl}
    if service.retention_days and parse_database_url(service.database_url).kind == "postgresql":
        options["retention_days"] = service.retention_days  # the PostgreSQL outbox purges old final mail itself
    return options


def service_outbox(service: ServiceConfig) -> Outbox:
    """The service's outbox, unopened (``async with`` it, or ``await outbox.open()`` in the loop)."""
    return open_outbox(service.database_url, **outbox_options(service))
