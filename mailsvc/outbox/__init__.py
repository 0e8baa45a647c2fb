"""The durable outbox: one contract (:class:`Outbox`), chosen by a URL.

``open_outbox("sqlite:///var/mailsvc.sqlite3")`` (or no URL) gives the embedded
SQLite outbox; ``postgresql://...`` the PostgreSQL one. The object comes back
unopened: ``async with open_outbox(url) as outbox:`` or ``await outbox.open()``
inside the running loop (aiosqlite/asyncpg connections belong to a loop).

Inside: :mod:`.core` runs every operation's steps over a store (:mod:`.store`), which
:mod:`.sqlite` and :mod:`.postgres` implement with their SQL; :mod:`.states` declares
the states; :mod:`.migrations` upgrades either schema.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from ..dburl import parse_database_url
from ..errors import ConfigError
from .base import (
    ClaimedMessage,
    EnqueueResult,
    Labels,
    MessageStatus,
    Outbox,
    RecipientOutcome,
    RecipientStatus,
    Suppression,
)
from .listing import Cursor, MessagePage, MessageQuery, MessageSummary
from .migrations import Migration
from .sqlite import SqliteOutbox
from .sqlite import upgrade_schema as upgrade_sqlite
from .states import MessageState, RecipientState

__all__ = [
    "ClaimedMessage",
    "Cursor",
    "EnqueueResult",
    "Labels",
    "MessagePage",
    "MessageQuery",
    "MessageState",
    "MessageStatus",
    "MessageSummary",
    "Outbox",
    "RecipientOutcome",
    "RecipientState",
    "RecipientStatus",
    "SqliteOutbox",
    "Suppression",
    "open_outbox",
    "upgrade_database",
]


def open_outbox(url: str | None = None, **options: Any) -> Outbox:
    """Build the outbox named by ``url`` (``MAILSVC_DATABASE_URL``); not opened yet.

    ``options`` (``max_pending``, ``idempotency_ttl``, ...) go to the implementation.
    """
    target = parse_database_url(url)
    if target.path is not None:
        return SqliteOutbox(target.path, **options)
    outbox: Outbox = _postgres().PostgresOutbox(target.url, **options)
    return outbox


async def upgrade_database(url: str | None = None) -> list[Migration]:
    """Bring the schema at ``url`` up to date (``mailsvc db upgrade``); return the migrations applied now."""
    target = parse_database_url(url)
    if target.path is not None:
        return await upgrade_sqlite(target.path)
    applied: list[Migration] = await _postgres().upgrade_schema(target.url)
    return applied


def _postgres() -> ModuleType:
    """The PostgreSQL outbox, imported only when named (asyncpg is needed only then)."""
    try:
        return importlib.import_module(f"{__name__}.postgres")
    except ModuleNotFoundError as exc:
        raise ConfigError("MAILSVC_DATABASE_URL", f"the PostgreSQL outbox is not available: {exc}") from exc
