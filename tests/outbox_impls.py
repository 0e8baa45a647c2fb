"""Every outbox implementation the contract suite runs against.

Each entry is an async factory ``(tmp_path, **options) -> Outbox`` returning an
*opened*, empty outbox; the fixture closes it. Options are the constructor
settings the contract tests vary (``max_pending``, ``idempotency_ttl``).
To add an implementation, append a factory to ``IMPLEMENTATIONS``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mailsvc.outbox import Outbox, open_outbox
from tests.pgtools import postgres_outbox

OutboxFactory = Callable[..., Awaitable[Outbox]]


async def sqlite_outbox(tmp_path: Path, **options: Any) -> Outbox:
    outbox = open_outbox(f"sqlite:///{tmp_path / 'outbox.sqlite3'}", **options)
    await outbox.open()
    return outbox


IMPLEMENTATIONS: dict[str, OutboxFactory] = {
    "sqlite": sqlite_outbox,
    "postgres": postgres_outbox,  # a schema per test on MAILSVC_TEST_POSTGRES_URL; skips if unreachable
}
