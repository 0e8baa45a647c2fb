"""``GET /readyz`` answers 503 while the outbox cannot be written, and 200 again once it can.

How the outbox is made unwritable: a second, real SQLite connection (another
process would do the same: a stuck ``mailsvc worker``, a backup, a ``sqlite3``
shell left inside a transaction) holds the database's write lock. This works
whoever runs the tests; ``chmod 0444`` would not stop root, and moving the file
away does not stop an open WAL-mode connection from writing.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mailsvc.outbox import SqliteOutbox
from tests.servers import RecordingHandler
from tests.webkit import AUTH, running

MSG = {"to": "ann@example.com", "subject": "Hello", "text": "Hi"}


async def test_readyz_is_503_while_the_outbox_cannot_be_written(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    async with running(smtp_port, handler, tmp_path, workers=0) as svc:
        r = await svc.client.get("/readyz")
        assert r.status_code == 200 and await r.get_json() == {"status": "ready"}  # anonymous: nothing more
        r = await svc.client.get("/readyz", headers=AUTH)
        assert r.status_code == 200 and (await r.get_json())["outbox"] == "ok"

        outbox = svc.outbox
        assert isinstance(outbox, SqliteOutbox)
        # The service waits 10 s for a busy lock; a test need not (as retry schedules are shortened elsewhere).
        await outbox.db.execute("PRAGMA busy_timeout = 100")
        blocker = sqlite3.connect(outbox.path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # the write lock, held
            assert await (await svc.client.get("/readyz")).get_json() == {"status": "not ready"}
            r = await svc.client.get("/readyz", headers=AUTH)
            body = await r.get_json()
            assert r.status_code == 503, body
            assert body["status"] == "not ready"
            assert body["outbox"].startswith("unavailable:") and "cannot be written" in body["outbox"]
            assert str(outbox.path) not in str(body) and outbox.path.name not in str(
                body
            )  # no paths, even to a caller with a key
            assert r.headers["Content-Type"].startswith("application/json")
            # readiness told the truth: a message would not be accepted now either
            post = await svc.client.post("/api/messages", json=MSG, headers=AUTH)
            assert post.status_code == 503
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

        r = await svc.client.get("/readyz")
        assert r.status_code == 200 and (await r.get_json())["status"] == "ready"
        post = await svc.client.post("/api/messages", json=MSG, headers=AUTH)
        assert post.status_code == 202
