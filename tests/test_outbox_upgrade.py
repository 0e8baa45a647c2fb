"""Outboxes written by an earlier release open, upgrade in place, and deliver the mail they held.

The fixtures were written by ``tests/fixtures/make_outbox_fixtures.py`` running the tree of
commit 5c1063a (SQLite ``user_version`` 1, PostgreSQL migration 0001): some mail already
delivered, failed or half delivered, some still queued (one message, a batch of three, one
under an idempotency key). After the upgrade a worker delivers exactly the mail still owed,
to a real aiosmtpd, and nothing that was already handled is sent again.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiosqlite
import asyncpg
import pytest

from mailsvc import MailConfig, Message
from mailsvc.config import ServiceConfig
from mailsvc.errors import NotFoundError, OutboxError
from mailsvc.outbox import Outbox, migrations, open_outbox, upgrade_database
from mailsvc.outbox.migrations import available
from mailsvc.outbox.postgres import Schema as PostgresSchema
from mailsvc.outbox.sqlite import Schema as SqliteSchema
from mailsvc.worker import WorkerGroup
from tests.pgtools import PG_URL, fresh_schema
from tests.servers import RecordingHandler, smtp_server

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "outbox_5c1063a.json").read_text(encoding="utf-8"))
# Still owed after the upgrade, by recipient: the deferred half of "half", and everything queued.
OWED = {
    "dan@example.com": "fixture half",
    "ann@example.com": "fixture solo",
    "b0@example.com": "fixture batch 0",
    "b1@example.com": "fixture batch 1",
    "b2@example.com": "fixture batch 2",
    "kim@example.com": "fixture keyed",
}
FAST = dict(
    retry_first=0.05,
    retry_max=0.2,
    retry_lifetime=10**9,  # the fixtures' mail was queued long before this test runs
    poll_interval=0.02,
    lease_seconds=30.0,
    workers=1,
    dev_mode=False,
)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    path = tmp_path / "outbox.sqlite3"
    shutil.copyfile(FIXTURES / "outbox_5c1063a.sqlite3", path)  # never the committed file itself
    return f"sqlite:///{path}"


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with fresh_schema("up") as url:
        [schema] = parse_qs(urlsplit(url).query)["search_path"]
        dump = (FIXTURES / "outbox_5c1063a.pg.sql").read_text(encoding="utf-8")
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(dump.replace("__SCHEMA__", schema))
        finally:
            await conn.close()
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def old(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """(URL of an outbox written by 5c1063a, the manifest of what it holds)."""
    url = request.getfixturevalue(f"{request.param}_url")
    return url, MANIFEST[request.param]


async def test_the_old_schema_is_recognised_as_current(old: tuple[str, dict[str, Any]]) -> None:
    """Its version is read, not guessed: nothing is re-applied to it, and it is at the newest version."""
    url, _ = old
    backend = "sqlite" if url.startswith("sqlite") else "postgres"
    applied = await upgrade_database(url)
    assert [m.version for m in applied] == [m.version for m in available(backend)][1:]
    assert await upgrade_database(url) == []


async def test_queued_mail_is_delivered_after_the_upgrade(old: tuple[str, dict[str, Any]]) -> None:
    url, made = old
    handler = RecordingHandler()
    async with open_outbox(url, idempotency_ttl=10**9) as outbox, smtp_server(handler) as port:
        assert {k: (await outbox.status(made[k])).state for k in made["states"]} == made["states"]
        assert await outbox.pending_count() == made["pending"] == 6
        # The idempotency key written by the old code still answers with its message.
        again = Message("fixture keyed", recipients=["kim@example.com"], body="x", sender="shop@example.com").build()
        replay = await outbox.enqueue([again], idempotency_key="fixture-key", fingerprint="fixture-fingerprint")
        assert replay.duplicate and replay.ids == [made["keyed"]]

        group = WorkerGroup.from_service(
            outbox, MailConfig(server="127.0.0.1", port=port, timeout=5), ServiceConfig(**FAST)
        )
        await group.start()
        try:
            await _drained(outbox)
        finally:
            await group.stop()

        by_rcpt = {rcpt: r for r in handler.received for rcpt in r.rcpt_tos}
        assert sorted(rcpt for r in handler.received for rcpt in r.rcpt_tos) == sorted(OWED)  # once each
        assert {rcpt: str(r.message["Subject"]) for rcpt, r in by_rcpt.items()} == OWED
        assert {r.mail_from for r in handler.received} == {"shop@example.com"}
        assert all("body of " + OWED[rcpt] in r.message.get_content() for rcpt, r in by_rcpt.items())

        for key in ("half", "solo", "keyed", "done"):
            assert (await outbox.status(made[key])).state == "delivered", key
        assert (await outbox.status(made["gone"])).state == "failed"
        half = await outbox.status(made["half"])
        assert [(r.recipient, r.state, r.attempts) for r in half.recipients] == [
            ("dee@example.com", "delivered", 1),
            ("dan@example.com", "delivered", 2),
        ]
        assert await outbox.batch_status(made["batch_id"]) == {"delivered": 3}
        # Mail queued before tenants belongs to none: an admin (unrestricted) sees it, a tenant does not.
        with pytest.raises(NotFoundError):
            await outbox.status(made["solo"], tenant="acme")
        with pytest.raises(NotFoundError):
            await outbox.batch_status(made["batch_id"], tenant="acme")


async def _drained(outbox: Outbox, within: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while await outbox.pending_count():
        assert loop.time() < deadline, "the upgraded outbox was not drained"
        await asyncio.sleep(0.02)


# -- the runner, on the same old databases --------------------------------------------------

NEXT = {  # a later release's migration, as the next numbered file would bring it
    "sqlite": "ALTER TABLE messages ADD COLUMN note TEXT NOT NULL DEFAULT '';\n"
    "CREATE INDEX messages_note ON messages (note);",
    "postgres": "ALTER TABLE mailsvc_message ADD COLUMN note text NOT NULL DEFAULT '';\n"
    "CREATE INDEX mailsvc_message_note ON mailsvc_message (note);",
}


@asynccontextmanager
async def schema_of(url: str) -> AsyncIterator[migrations.Schema]:
    """The runner's view of the database at ``url``, on a connection of its own."""
    if url.startswith("sqlite"):
        db = await aiosqlite.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            yield SqliteSchema(db)
        finally:
            await db.close()
    else:
        conn = await asyncpg.connect(url)
        try:
            yield PostgresSchema(conn)
        finally:
            await conn.close()


async def test_a_later_migration_is_applied_in_place_and_then_refused_by_older_code(
    old: tuple[str, dict[str, Any]],
) -> None:
    url, _ = old
    async with schema_of(url) as schema:
        shipped = available(schema.backend)
        nxt = len(shipped) + 1
        later = [*shipped, migrations.Migration(nxt, "note", NEXT[schema.backend])]
        applied = [m.label for m in await migrations.upgrade(schema, later)]
        assert applied == [m.label for m in shipped[1:]] + [f"{nxt:04d}_note"]
        assert await schema.applied() == set(range(1, nxt + 1))
        assert await migrations.upgrade(schema, later) == []
    # The rows survived the ALTER; this code, which knows only the shipped versions, refuses to write to a later one.
    with pytest.raises(OutboxError, match=f"version {nxt} but this mailsvc knows only up to {nxt - 1}"):
        await open_outbox(url).open()


async def test_a_failing_migration_leaves_the_database_as_it_was(old: tuple[str, dict[str, Any]]) -> None:
    url, made = old
    await upgrade_database(url)  # the shipped migrations; then a later one that fails half-way
    async with schema_of(url) as schema:
        shipped = available(schema.backend)
        broken = NEXT[schema.backend] + "\nALTER TABLE no_such_table ADD COLUMN x integer;"
        later = [*shipped, migrations.Migration(len(shipped) + 1, "broken", broken)]
        with pytest.raises((sqlite3.Error, asyncpg.PostgresError)):
            await migrations.upgrade(schema, later)
        assert await schema.applied() == set(range(1, len(shipped) + 1))
    async with open_outbox(url) as outbox:  # still the shipped version, the half-applied ALTER rolled back
        assert await outbox.pending_count() == made["pending"]


async def mailsvc_cli(url: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailsvc.cli",
        *args,
        cwd=ROOT,
        env={**os.environ, "MAILSVC_DATABASE_URL": url, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_db_upgrade_on_sqlite_from_several_processes_at_once(tmp_path: Path, sqlite_url: str) -> None:
    """``mailsvc db upgrade`` is the same command for SQLite: the write lock lets one process apply each file."""
    fresh = f"sqlite:///{tmp_path / 'new' / 'outbox.sqlite3'}"
    runs = await asyncio.gather(*(mailsvc_cli(fresh, "db", "upgrade") for _ in range(4)))
    assert [rc for rc, _, _ in runs] == [0, 0, 0, 0], runs
    assert sum("applied 0001_initial" in out for _, out, _ in runs) == 1, runs
    assert sum("is up to date" in out for _, out, _ in runs) == 3, runs
    with sqlite3.connect(tmp_path / "new" / "outbox.sqlite3") as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(available("sqlite")),)
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    conn.close()
    path = sqlite_url.removeprefix("sqlite:///")
    rc, out, err = await mailsvc_cli(sqlite_url, "db", "upgrade")  # written by 5c1063a: version 1 recognised
    later = ", ".join(m.label for m in available("sqlite")[1:])
    assert (rc, out.strip()) == (0, f"outbox schema at {path}: applied {later}"), err
    rc, out, err = await mailsvc_cli(sqlite_url, "db", "upgrade")
    assert (rc, out.strip()) == (0, f"outbox schema at {path} is up to date"), err
