"""The outbox a :class:`ServiceConfig` names, with the service's limits: Quart-free.

Why here and not in ``runtime.py`` (which has the same ``outbox_options``): the
CLI (``mailsvc send``, ``bulk``, ``worker``) opens the outbox the service opens,
and ``mailsvc worker`` must run without importing Quart. ``runtime.outbox_options``
can become a re-export of this one.
"""

from __future__ import annotations

from typing import Any

from .config import ServiceConfig
from .outbox import Outbox, open_outbox

__all__ = ["outbox_options", "service_outbox"]


def outbox_options(service: ServiceConfig) -> dict[str, Any]:
    """The outbox settings carried by the service config."""
    options: dict[str, Any] = {"max_pending": service.max_pending, "idempotency_ttl": service.idempotency_ttl}
    if service.retention_days and service.database_url.startswith(("postgresql", "postgres:")):
        options["retention_days"] = service.retention_days  # the PostgreSQL outbox purges old final mail itself
    return options


def service_outbox(service: ServiceConfig) -> Outbox:
    """The service's outbox, unopened (``async with`` it, or ``await outbox.open()`` in the loop)."""
    return open_outbox(service.database_url, **outbox_options(service))
