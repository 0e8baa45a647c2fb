"""Versioned schema migrations for the PostgreSQL outbox.

Why files and a lock: every node runs ``upgrade`` at start-up (and ``mailsvc db
upgrade`` runs it by hand), so several may start at once. A session-level
``pg_advisory_lock`` serialises them; the first applies what is missing, each
later one finds the version table up to date and does nothing. Each file
``NNNN_name.sql`` runs in its own transaction together with the row that records
it, so a failed migration leaves the previous version intact.

To change the schema, add the next numbered file; never edit an applied one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

__all__ = ["LOCK_KEY", "Migration", "applied_versions", "available", "upgrade"]

# An arbitrary constant shared by every node: pg_advisory_lock's key (a bigint).
LOCK_KEY = 0x6D61696C737663  # "mailsvc"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """The migrations shipped with this package, in version order."""
    found = []
    for entry in resources.files(__name__).iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"outbox migrations must be numbered 1..n without gaps, found {versions}")
    return found


_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS mailsvc_schema_version (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def applied_versions(conn: asyncpg.Connection) -> list[int]:
    """Versions recorded in the current schema (empty before the first upgrade)."""
    exists = await conn.fetchval("SELECT to_regclass('mailsvc_schema_version') IS NOT NULL")
    if not exists:
        return []
    rows = await conn.fetch("SELECT version FROM mailsvc_schema_version ORDER BY version")
    return [r["version"] for r in rows]


async def upgrade(conn: asyncpg.Connection) -> list[Migration]:
    """Apply every missing migration under the advisory lock; return the ones this call applied.

    Raises :class:`RuntimeError` when the database is newer than this code (a
    node running old code must not write to a schema it does not know).
    """
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(_VERSION_TABLE)
        done = set(await applied_versions(conn))
        shipped = available()
        newest = shipped[-1].version if shipped else 0
        if done and max(done) > newest:
            raise RuntimeError(
                f"the outbox schema is at version {max(done)} but this mailsvc knows only up to "
                f"{newest}; upgrade mailsvc on this node"
            )
        applied = []
        for mig in shipped:
            if mig.version in done:
                continue
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO mailsvc_schema_version (version, name) VALUES ($1, $2)", mig.version, mig.name
                )
            applied.append(mig)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
