"""``mailsvc db upgrade`` / ``db purge`` as real processes against real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from mailsvc.message import Message
from mailsvc.outbox.base import RecipientOutcome
from mailsvc.outbox.migrations import available
from mailsvc.outbox.postgres import PostgresOutbox
from tests.pgtools import fresh_schema

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with fresh_schema("cli") as u:
        yield u


async def mailsvc(url: str, *args: str, **extra: str) -> tuple[int, str, str]:
    env = {**os.environ, "MAILSVC_DATABASE_URL": url, "PYTHONPATH": str(ROOT), **extra}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailsvc.cli",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_db_upgrade_from_several_nodes_at_once(url: str) -> None:
    runs = await asyncio.gather(*(mailsvc(url, "db", "upgrade") for _ in range(4)))
    assert [rc for rc, _, _ in runs] == [0, 0, 0, 0], runs
    outs = [out for _, out, _ in runs]
    assert sum("applied 0001_initial" in o for o in outs) == 1, outs
    assert sum("up to date" in o for o in outs) == 3, outs
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM mailsvc_schema_version") == len(available("postgres"))
        assert await conn.fetchval("SELECT to_regclass('mailsvc_message') IS NOT NULL")
    finally:
        await conn.close()


async def test_db_upgrade_reports_an_unreachable_server() -> None:
    rc, _, err = await mailsvc("postgresql://postgres@127.0.0.1:1/test", "db", "upgrade")
    assert rc == 1
    assert "cannot reach PostgreSQL" in err


async def test_db_purge_counts_what_it_deleted(url: str) -> None:
    assert (await mailsvc(url, "db", "upgrade"))[0] == 0
    rc, out, err = await mailsvc(url, "db", "purge", "--days", "30")
    assert (rc, out.strip()) == (0, "deleted 0 delivered/failed messages older than 30 days"), err
    rc, _, err = await mailsvc(url, "db", "purge", "--days", "-1")
    assert rc == 2 and "--days" in err
    rc, _, err = await mailsvc(url, "db", "purge")
    assert rc == 2 and "MAILSVC_RETENTION_DAYS" in err
    box = PostgresOutbox(url)
    await box.open()
    try:
        ids = (
            await box.enqueue(
                [
                    Message(f"m{i}", recipients=["a@example.com"], body="x", sender="s@example.com").build()
                    for i in range(2)
                ]
            )
        ).ids
        await box.claim("w", 10, 60)
        await box.record_many("w", [(i, [RecipientOutcome("a@example.com", "delivered", 250, "ok")]) for i in ids])
        await box.pool.execute(
            "UPDATE mailsvc_message SET updated_at = now() - interval '20 days' WHERE id = $1", ids[0]
        )
    finally:
        await box.close()
    rc, out, err = await mailsvc(url, "db", "purge", MAILSVC_RETENTION_DAYS="14")
    assert (rc, out.strip()) == (0, "deleted 1 delivered/failed messages older than 14 days"), err
