"""Issue 13, faults of the database: PostgreSQL connections killed mid-operation, SQLite's disk full.

What must hold: no 500 leaks a driver error (a 503 with Retry-After instead), a request
is queued whole or not at all, nothing accepted is lost, and the service recovers without
a restart. Each request carries its own subject, so the sink tells which requests' mail
arrived and whether any arrived only in part.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr
from quart import Quart

from mailsvc import MailConfig
from mailsvc.app import create_app
from mailsvc.config import ServiceConfig, WebConfig
from mailsvc.services import services
from tests.pgtools import PG_URL, fresh_database
from tests.servers import RecordingHandler
from tests.webkit import AUTH, KEY, TEMPLATES


def make_app(database_url: str, smtp_port: int) -> Quart:
    return create_app(
        MailConfig(server="127.0.0.1", port=smtp_port, default_sender="svc@example.com", timeout=5.0),
        ServiceConfig(
            database_url=database_url,
            dev_mode=False,
            workers=1,
            templates=TEMPLATES,
            poll_interval=0.05,
            retry_first=0.05,
            retry_max=0.1,
            web=WebConfig(api_keys=(SecretStr(KEY),), secure_cookies=False, rate_limit=0),
        ),
    )


def bulk(subject: str, n: int) -> dict[str, object]:
    return {"subject": subject, "text": "x", "recipients": [{"to": f"u{i}@example.com"} for i in range(n)]}


async def _terminate(dbname: str, stop: asyncio.Event) -> int:
    """Kill every other connection to the test's own database, again and again, until told to stop."""
    killed = 0
    admin = await asyncpg.connect(PG_URL, timeout=10)
    try:
        while not stop.is_set():
            rows = await admin.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                dbname,
            )
            killed += len(rows)
            await asyncio.sleep(0.03)
    finally:
        await admin.close()
    return killed


@pytest.fixture
async def pg_db() -> AsyncIterator[tuple[str, str]]:
    async with fresh_database("fault") as url:
        yield url, url.rsplit("/", 1)[1].split("?", 1)[0]


async def _wait_for(pred: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Poll until ``pred`` holds (a guard against hanging; the caller asserts what must hold)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await pred() and loop.time() < deadline:
        await asyncio.sleep(0.05)


async def test_postgres_connections_killed_mid_enqueue_claim_and_record(
    pg_db: tuple[str, str], smtp_port: int, handler: RecordingHandler
) -> None:
    url, dbname = pg_db
    app = make_app(url, smtp_port)
    sizes = {f"req-{i}": 300 for i in range(8)}
    async with app.test_app() as served:
        client = served.test_client()
        stop = asyncio.Event()
        killer = asyncio.create_task(_terminate(dbname, stop))
        statuses: dict[str, int] = {}
        try:
            for subject, n in sizes.items():
                r = await client.post("/api/messages/bulk", json=bulk(subject, n), headers=AUTH)
                statuses[subject] = r.status_code
                body = await r.get_data(as_text=True)
                assert r.status_code in (202, 503), body  # never a 500
                if r.status_code == 503:
                    assert "Retry-After" in r.headers and "asyncpg" not in body and "terminat" not in body
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            killed = await killer
        assert killed > 0  # the faults really happened

        # Recovery without a restart: the next request is accepted and everything accepted is delivered.
        r = await client.post("/api/messages/bulk", json=bulk("after", 5), headers=AUTH)
        assert r.status_code == 202, await r.get_data(as_text=True)
        statuses["after"], sizes["after"] = 202, 5
        accepted = {s: sizes[s] for s, code in statuses.items() if code == 202}

        async def all_delivered() -> bool:
            got = Counter(str(m.message["Subject"]) for m in handler.received)
            return all(got[s] >= n for s, n in accepted.items())

        await _wait_for(all_delivered, 60)
        outbox = services(app).open_outbox()

        async def drained() -> bool:
            return await outbox.pending_count() == 0

        await _wait_for(drained, 60)

    got = Counter(str(m.message["Subject"]) for m in handler.received)
    for subject, n in sizes.items():
        if statuses[subject] == 202:
            assert got[subject] >= n, f"{subject}: accepted {n}, delivered {got[subject]}"
        else:
            assert got[subject] == 0, f"{subject}: refused with 503 but {got[subject]} messages were sent"
    distinct = {(str(m.message["Message-ID"])) for m in handler.received}
    duplicates = len(handler.received) - len(distinct)
    assert duplicates <= sum(accepted.values()) // 10, f"{duplicates} duplicates"  # only what was on the wire


TMPFS_MB = 4


@contextlib.contextmanager
def small_disk(where: Path) -> Iterator[Path]:
    """A 4 MB tmpfs at ``where`` (root and mount(8) needed; the test is skipped with the reason otherwise)."""
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(where)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def test_sqlite_disk_full_is_503_with_nothing_half_queued_and_recovers(
    tmp_path: Path, smtp_port: int, handler: RecordingHandler
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        app = make_app(f"sqlite:///{disk}/outbox.sqlite3", smtp_port)
        async with app.test_app() as served:
            client = served.test_client()
            outbox = services(app).open_outbox()
            filler = disk / "filler"
            with filler.open("wb") as f:  # fill the disk to the last block
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
            before = await outbox.pending_count()
            r = await client.post("/api/messages/bulk", json=bulk("full", 2000), headers=AUTH)
            body = await r.get_data(as_text=True)
            assert r.status_code == 503, body
            assert "Retry-After" in r.headers and "disk" not in body.lower() and str(disk) not in body
            assert await outbox.pending_count() == before  # nothing half-queued

            filler.unlink()  # space returns
            r = await client.post("/api/messages/bulk", json=bulk("room", 3), headers=AUTH)
            assert r.status_code == 202, await r.get_data(as_text=True)

            async def delivered() -> bool:
                return sum(1 for m in handler.received if str(m.message["Subject"]) == "room") >= 3

            await _wait_for(delivered)
        assert [str(m.message["Subject"]) for m in handler.received].count("full") == 0
        assert [str(m.message["Subject"]) for m in handler.received].count("room") == 3
