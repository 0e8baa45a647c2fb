"""The durable outbox: one contract (:class:`Outbox`), chosen by a URL.

``open_outbox("sqlite:///var/mailsvc.sqlite3")`` (or no URL) gives the embedded
SQLite outbox; ``postgresql://...`` the PostgreSQL one. The object comes back
unopened: ``async with open_outbox(url) as outbox:`` or ``await outbox.open()``
inside the running loop (aiosqlite/asyncpg connections belong to a loop).
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError
from .base import (
    ClaimedMessage,
    EnqueueResult,
    MessageStatus,
    Outbox,
    RecipientOutcome,
    RecipientState,
    RecipientStatus,
)
from .sqlite import SqliteOutbox, path_from_url

__all__ = [
    "ClaimedMessage",
    "EnqueueResult",
    "MessageStatus",
    "Outbox",
    "RecipientOutcome",
    "RecipientState",
    "RecipientStatus",
    "SqliteOutbox",
    "open_outbox",
]


def open_outbox(url: str | None = None, **options: Any) -> Outbox:
    """Build the outbox named by ``url`` (``MAILSVC_DATABASE_URL``); not opened yet.

    ``options`` (``max_pending``, ``idempotency_ttl``, ...) go to the implementation.
    """
    if not url or url.startswith("sqlite:"):
        if url and not url.startswith("sqlite:///"):
            raise ConfigError(
                "MAILSVC_DATABASE_URL", f"{url!r}: write sqlite:///relative/path or sqlite:////absolute/path"
            )
        return SqliteOutbox(path_from_url(url), **options)
    if url.startswith(("postgresql://", "postgres://", "postgresql+")):
        try:
            module = importlib.import_module(f"{__name__}.postgres")
        except ModuleNotFoundError as exc:
            raise ConfigError("MAILSVC_DATABASE_URL", f"the PostgreSQL outbox is not available: {exc}") from exc
        factory = module.open_postgres_outbox if hasattr(module, "open_postgres_outbox") else module.PostgresOutbox
        outbox: Outbox = factory(url, **options)
        return outbox
    scheme = url.partition(":")[0]
    raise ConfigError(
        "MAILSVC_DATABASE_URL", f"unknown database scheme {scheme!r}: use sqlite:///path or postgresql://..."
    )
