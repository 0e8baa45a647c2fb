"""How much one bulk request with an attachment grows the outbox (issue 13, finding 7).

    .venv/bin/python bench/outbox_growth.py                       # 9 MB attachment, 50 recipients, SQLite
    .venv/bin/python bench/outbox_growth.py --postgres postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/outbox_growth.py --mb 1 --n 200

The real app (``create_app``, Quart's test client, no workers so nothing is delivered)
takes one ``POST /api/messages/bulk`` carrying a random (incompressible) file, and the
outbox's size is read before and after: SQLite's pages in use after a WAL checkpoint,
PostgreSQL's ``pg_total_relation_size`` of every table in a fresh schema (TOAST and
indexes included). Also printed: the time to the 202 and this process's peak RSS.
It imports whichever ``mailsvc`` is on the path, so the same command measures an older tree
(``PYTHONPATH=/path/to/old/tree``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
from pydantic import SecretStr

from mailsvc.app import create_app
from mailsvc.config import MailConfig, ServiceConfig, WebConfig

KEY = "bench-key"


async def sqlite_size(path: Path) -> int:
    async with aiosqlite.connect(path) as db:
        await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        values = []
        for pragma in ("page_count", "freelist_count", "page_size"):
            async with db.execute(f"PRAGMA {pragma}") as cur:
                row = await cur.fetchone()
                assert row is not None
                values.append(int(row[0]))
    return (values[0] - values[1]) * values[2]


async def postgres_size(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        total = await conn.fetchval(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = current_schema()"
        )
    finally:
        await conn.close()
    return int(total)


async def measure(database_url: str, size: Any, mb: float, n: int) -> dict[str, float]:
    raw = os.urandom(int(mb * 1024 * 1024))
    body = {
        "subject": "Report for {{ name }}",
        "text": "Dear {{ name }}, the report is attached.",
        "attachments": [
            {"filename": "r.pdf", "content_type": "application/pdf", "content": base64.b64encode(raw).decode()}
        ],
        "recipients": [{"to": f"u{i}@example.com", "context": {"name": f"U{i}"}} for i in range(n)],
    }
    service = ServiceConfig(
        database_url=database_url,
        workers=0,
        dev_mode=False,
        web=WebConfig(api_keys=(SecretStr(KEY),), secure_cookies=False, max_request_bytes=256 * 1024 * 1024),
    )
    app = create_app(MailConfig(server="127.0.0.1", port=25, default_sender="bench@example.com"), service)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        before = await size()
        started = time.perf_counter()
        r = await client.post("/api/messages/bulk", json=body, headers={"Authorization": f"Bearer {KEY}"})
        accepted = time.perf_counter() - started
        if r.status_code != 202:
            sys.exit(f"the request was refused: {r.status_code} {await r.get_data(as_text=True)}")
        grown = await size() - before
    return {"grown": grown, "accepted": accepted, "body": len(raw) * 4 / 3}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=9.0, help="attachment size in MiB (default 9)")
    p.add_argument("--n", type=int, default=50, help="recipients (default 50)")
    p.add_argument("--postgres", metavar="URL", help="measure a fresh schema on this server instead of SQLite")
    args = p.parse_args()
    if args.postgres:
        schema = f"mailsvc_growth_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(args.postgres)
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        url = f"{args.postgres}{'&' if '?' in args.postgres else '?'}search_path={schema}"
        try:
            result = await measure(url, lambda: postgres_size(url), args.mb, args.n)
        finally:
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
            await admin.close()
        where = "PostgreSQL"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "outbox.sqlite3"
            result = await measure(f"sqlite:///{path}", lambda: sqlite_size(path), args.mb, args.n)
        where = "SQLite"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{where}: a {args.mb:g} MiB attachment to {args.n} recipients grew the outbox by "
        f"{result['grown'] / 1e6:,.1f} MB ({result['grown'] / result['body']:.1f} copies of its encoded body); "
        f"202 after {result['accepted']:.1f} s; peak RSS {peak:,.0f} MB"
    )


if __name__ == "__main__":
    asyncio.run(main())
