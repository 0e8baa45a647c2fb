"""Real PostgreSQL for tests: a fresh schema (or database) per test on the server at ``PG_URL``.

Why a schema per test: each test sees an empty outbox without the cost of
``CREATE DATABASE``; the URL carries ``search_path`` (asyncpg passes unknown
query parameters as server settings), so every connection of the pool, and any
subprocess given the URL, lands in the same schema.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from mailsvc.outbox.base import Outbox

__all__ = ["PG_URL", "fresh_database", "fresh_schema", "postgres_outbox", "require_postgres", "unreachable_reason"]

PG_URL = os.environ.get("MAILSVC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

_reason: str | None = None
_checked = False


async def unreachable_reason() -> str | None:
    """None when the server answers; else why not (checked once per test session)."""
    global _reason, _checked
    if not _checked:
        try:
            conn = await asyncpg.connect(PG_URL, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            _reason = f"PostgreSQL at {PG_URL} is unreachable ({exc}); set MAILSVC_TEST_POSTGRES_URL"
        else:
            await conn.close()
        _checked = True
    return _reason


async def require_postgres() -> None:
    """Skip the calling test, with the reason, only when the server cannot be reached."""
    reason = await unreachable_reason()
    if reason:
        pytest.skip(reason)
    await _sweep_stale()


# Every schema/database a test makes is named mailsvc_<prefix>_<unix time>_<hex>, so what a killed run
# left behind can be recognised by age and dropped by the next run (no run lasts an hour; a run going on
# at the same time on this server is younger and left alone).
_STALE_AFTER = 3600
_STAMPED = re.compile(r"^mailsvc_[a-z]+_(\d{10})_[0-9a-f]+$")
_session_stamp = int(time.time())
_swept = False


def _name(prefix: str, suffix: str, stamp: int | None = None) -> str:
    return f"mailsvc_{prefix}_{stamp if stamp is not None else int(time.time())}_{suffix}"


async def _sweep_stale() -> None:
    global _swept
    if _swept:
        return
    _swept = True
    cutoff = time.time() - _STALE_AFTER
    conn = await asyncpg.connect(PG_URL, timeout=10)
    try:
        schemas = [r[0] for r in await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'mailsvc\\_%'")]
        dbs = [r[0] for r in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'mailsvc\\_%'")]
        for name in schemas:
            m = _STAMPED.match(name)
            if m and int(m.group(1)) < cutoff:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        for name in dbs:
            m = _STAMPED.match(name)
            if m and int(m.group(1)) < cutoff:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _with_path(url: str, *, path: str | None = None, query: str | None = None) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=path if path is not None else parts.path, query=query or parts.query))


@asynccontextmanager
async def fresh_schema(prefix: str = "t") -> AsyncIterator[str]:
    """Create an empty schema; yield a URL whose connections use it; drop it afterwards."""
    await require_postgres()
    name = _name(prefix, uuid.uuid4().hex[:12])
    admin = await asyncpg.connect(PG_URL, timeout=10)
    try:
        await admin.execute(f'CREATE SCHEMA "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_path(PG_URL, query=f"search_path={name}")
    finally:
        admin = await asyncpg.connect(PG_URL, timeout=10)
        try:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await admin.close()


@asynccontextmanager
async def fresh_database(prefix: str = "t") -> AsyncIterator[str]:
    """Create an empty database (for multi-process tests); yield its URL; drop it afterwards."""
    await require_postgres()
    name = _name(prefix, uuid.uuid4().hex[:12])
    admin = await asyncpg.connect(PG_URL, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_path(PG_URL, path=f"/{name}")
    finally:
        admin = await asyncpg.connect(PG_URL, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


_contract_schemas: set[str] = set()


def _drop_contract_schemas() -> None:
    """At exit: drop the schemas the contract suite made (a test may reopen its outbox, so not on close)."""
    if not _contract_schemas:
        return

    async def drop() -> None:
        conn = await asyncpg.connect(PG_URL, timeout=10)
        try:
            for name in sorted(_contract_schemas):
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


async def postgres_outbox(tmp_path: object, **options: Any) -> Outbox:
    """Contract-suite factory: an opened PostgresOutbox in the schema of this test.

    Every call with the same ``tmp_path`` (one test) shares one schema, as two
    nodes share one database; the schemas are dropped when the test run ends.
    """
    from mailsvc.outbox.postgres import PostgresOutbox

    await require_postgres()
    name = _name("c", hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16], _session_stamp)
    if name not in _contract_schemas:
        if not _contract_schemas:
            atexit.register(_drop_contract_schemas)
        _contract_schemas.add(name)
        admin = await asyncpg.connect(PG_URL, timeout=10)
        try:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            await admin.execute(f'CREATE SCHEMA "{name}"')
        finally:
            await admin.close()
    outbox = PostgresOutbox(_with_path(PG_URL, query=f"search_path={name}"), pool_size=4, **options)
    await outbox.open()
    return outbox
