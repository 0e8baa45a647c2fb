"""The outbox a :class:`ServiceConfig` names, with the service's limits: Quart-free.

Why here and not in ``runtime.py``: the CLI (``mailsvc send``, ``bulk``, ``worker``)
opens the outbox the service opens, and ``mailsvc worker`` must run without
importing Quart. ``runtime`` (the app's lifespan) opens it through here too.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from .config import ServiceConfig
from .dburl import dev_outbox_url, parse_database_url
from .outbox import Outbox, open_outbox
from .outbox.states import FINAL_MESSAGE, MessageState

__all__ = ["dev_leftovers", "outbox_options", "service_outbox"]


def outbox_options(service: ServiceConfig) -> dict[str, Any]:
    """The outbox settings carried by the service config."""
    options: dict[str, Any] = {"max_pending": service.max_pending, "idempotency_ttl": service.idempotency_ttl}
    if service.retention_days and parse_database_url(service.database_url).kind == "postgresql":
        options["retention_days"] = service.retention_days  # the PostgreSQL outbox purges old final mail itself
    return options


def service_outbox(service: ServiceConfig) -> Outbox:
    """The service's outbox, unopened (``async with`` it, or ``await outbox.open()`` in the loop)."""
    return open_outbox(service.database_url, **outbox_options(service))


def dev_leftovers(database_url: str) -> tuple[Path, int] | None:
    """Dev mode's outbox beside ``database_url`` and how many of its messages were never delivered.

    Read-only and synchronous (a start-up check of a small local file): those messages
    stay where they are, undelivered, and the operator is told so at start-up.
    """
    path = parse_database_url(dev_outbox_url(database_url)).path
    if path is None or not path.is_file():
        return None
    pending = ",".join(f"'{s.value}'" for s in sorted(frozenset(MessageState) - FINAL_MESSAGE))
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
            (count,) = db.execute(f"SELECT count(*) FROM messages WHERE state IN ({pending})").fetchone()
    except sqlite3.Error:
        return None  # not an outbox we can read: nothing to report
    return (path, int(count)) if count else None
