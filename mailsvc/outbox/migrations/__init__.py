"""Numbered schema migrations for both outboxes, and the one runner that applies them.

Each backend has a folder of files ``NNNN_name.sql`` (``postgres/``, ``sqlite/``), numbered
1..n without gaps. :func:`upgrade` applies those a database lacks, in order, on every
outbox :meth:`~mailsvc.outbox.Outbox.open` and from ``mailsvc db upgrade``. A backend only
says how to lock, read the version and apply one file (:class:`Schema`):

* PostgreSQL records each applied file in ``mailsvc_schema_version`` and serialises
  runners on a session advisory lock; each file runs in one transaction with its row.
* SQLite records the version in ``PRAGMA user_version`` (in the file header, written in the
  same transaction as the file's statements) and serialises runners on its write lock
  (``BEGIN IMMEDIATE``). Why not a table: SQLite outboxes written before this runner
  already carry ``user_version = 1`` for exactly the schema of ``0001_initial``, so they
  are recognised without guessing, and the header costs no query on each open.

To change a schema, add the next numbered file to each backend; never edit an applied one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from importlib import resources
from typing import Literal, Protocol

from ...errors import OutboxError

__all__ = ["Backend", "Migration", "Schema", "available", "upgrade"]

Backend = Literal["postgres", "sqlite"]
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        """``0001_initial``: the file's name without ``.sql``."""
        return f"{self.version:04d}_{self.name}"


def available(backend: Backend) -> list[Migration]:
    """The migrations shipped for ``backend``, in version order."""
    found = []
    for entry in (resources.files(__name__) / backend).iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if versions != list(range(1, len(found) + 1)):
        raise OutboxError(f"{backend} outbox migrations must be numbered 1..n without gaps, found {versions}")
    return found


class Schema(Protocol):
    """One database as the runner sees it."""

    backend: Backend

    def locked(self) -> AbstractAsyncContextManager[None]:
        """Hold off every other runner on this database (other processes and nodes too)."""

    async def applied(self) -> set[int]:
        """The versions this database has (empty for a new one)."""

    async def apply(self, migration: Migration) -> None:
        """Run ``migration`` and record its version, both or neither."""


async def upgrade(schema: Schema, migrations: Sequence[Migration] | None = None) -> list[Migration]:
    """Apply every missing migration (default: those shipped for the backend); return the ones applied now.

    Raises :class:`OutboxError` when the database is newer than this code: a node running old
    code must not write to a schema it does not know.
    """
    shipped = available(schema.backend) if migrations is None else list(migrations)
    newest = shipped[-1].version if shipped else 0
    async with schema.locked():
        done = await schema.applied()
        if done and max(done) > newest:
            raise OutboxError(
                f"the outbox schema is at version {max(done)} but this mailsvc knows only up to "
                f"{newest}; upgrade mailsvc on this node"
            )
        applied = []
        for mig in shipped:
            if mig.version not in done:
                await schema.apply(mig)
                applied.append(mig)
        return applied
