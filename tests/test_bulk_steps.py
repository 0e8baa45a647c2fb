"""A big bulk stored in steps on SQLite (issue 18): others commit between its steps, it is seen only when sealed.

Order-based, never timed: the bulk's chunks come from a generator that, between two steps, runs the
other operation to completion (with the old one-transaction store that operation waited on the bulk's
lock forever; the ``wait_for`` guard turns that hang into a failure).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailsvc import Message
from mailsvc.errors import NotFoundError
from mailsvc.message import Envelope
from mailsvc.outbox import MessageQuery, SqliteOutbox
from tests.procs import free_port, stop_group
from tests.servers import RecordingHandler, smtp_server
from tests.webkit import AUTH, running

ROOT = Path(__file__).resolve().parent.parent
GUARD = 30.0  # seconds before a hang is a failure (not a timing assertion)


def envelopes(n: int, prefix: str = "u") -> list[Envelope]:
    return [
        Message(f"n{i}", recipients=[f"{prefix}{i}@example.com"], body="x", sender="s@example.com").build()
        for i in range(n)
    ]


async def chunked(
    items: Sequence[Envelope], size: int, between: Callable[[], Awaitable[None]] | None = None
) -> AsyncIterator[Sequence[Envelope]]:
    """The envelopes ``size`` at a time; ``between`` runs after the first chunk is stored."""
    for at in range(0, len(items), size):
        yield items[at : at + size]
        if at == 0 and between is not None:
            await between()


def staged_rows(path: Path) -> list[tuple[str, str, int]]:
    """(id, batch id, stage) of the rows of unsealed stages, read from another connection."""
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT id, batch_id, stage FROM messages WHERE stage IN (SELECT id FROM stages WHERE NOT sealed)"
        ).fetchall()


async def test_a_single_enqueue_commits_between_the_steps_and_the_batch_is_unseen_until_sealed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite3"
    async with SqliteOutbox(path) as outbox:
        outbox.step_messages = 4
        seen: dict[str, Any] = {}

        async def meanwhile() -> None:
            seen["single"] = (await outbox.enqueue(envelopes(1, "single"))).ids[0]
            staged = staged_rows(path)
            assert len(staged) == 8  # the first chunk is stored (two steps), the rest is not
            seen["batch"] = batch = staged[0][1]
            claimed = await outbox.claim("w", 100, 60)
            assert [m.id for m in claimed] == [seen["single"]]  # staged rows are never due
            with pytest.raises(NotFoundError):
                await outbox.batch_status(batch)
            with pytest.raises(NotFoundError):
                await outbox.status(staged[0][0])
            page = await outbox.list_messages(MessageQuery())
            assert [m.id for m in page.items] == [seen["single"]]
            assert await outbox.pending_count() == 1
            async with outbox.store.read("t") as tx:
                assert await tx.list_messages(MessageQuery(batch_id=batch), None, None, 10, 100) == []

        bulk = envelopes(20)
        result = await asyncio.wait_for(
            outbox.enqueue_stream(20, chunked(bulk, 8, meanwhile), batch=True, idempotency_key="k", fingerprint="f"),
            GUARD,
        )
        assert result.batch_id == seen["batch"] and not result.duplicate
        assert staged_rows(path) == []
        with sqlite3.connect(path) as conn:
            pks = dict(conn.execute("SELECT id, pk FROM messages").fetchall())
            events = conn.execute("SELECT message, type FROM events ORDER BY seq").fetchall()
        # The single's row was committed after the bulk's first step and before its last.
        assert min(pks[i] for i in result.ids) < pks[seen["single"]] < max(pks[i] for i in result.ids)
        assert events[0] == (seen["single"], "queued")  # the batch's events come with its seal, once each
        ours = [(m, t) for m, t in events if m in set(result.ids)]
        assert sorted(m for m, _ in ours) == sorted(result.ids) and {t for _, t in ours} == {"queued"}
        assert await outbox.batch_status(result.batch_id or "") == {"queued": 20}
        assert await outbox.pending_count() == 21  # the batch, and the single (claimed, being sent)
        claimed = await outbox.claim("w", 100, 60)
        assert sorted(m.id for m in claimed) == sorted(result.ids)
        replay = await outbox.enqueue_stream(20, chunked(bulk, 8), batch=True, idempotency_key="k", fingerprint="f")
        assert replay.duplicate and replay.ids == result.ids


async def test_a_failure_between_steps_leaves_nothing_and_the_key_works_again(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"

    class Broken(Exception):
        pass

    async def fail() -> None:
        assert len(staged_rows(path)) == 6
        raise Broken

    async with SqliteOutbox(path) as outbox:
        outbox.step_messages = 3
        bulk = envelopes(12)
        with pytest.raises(Broken):
            await outbox.enqueue_stream(12, chunked(bulk, 6, fail), batch=True, idempotency_key="k", fingerprint="f")
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*) FROM messages").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM contents").fetchone() == (0,)  # the bytes went with them
            assert conn.execute("SELECT count(*) FROM stages").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
        assert await outbox.claim("w", 100, 60) == []
        again = await outbox.enqueue_stream(12, chunked(bulk, 6), batch=True, idempotency_key="k", fingerprint="f")
        assert not again.duplicate
        assert sorted(m.id for m in await outbox.claim("w", 100, 60)) == sorted(again.ids)


async def test_the_sweep_deletes_a_dead_stage_and_activates_a_sealed_one(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    async with SqliteOutbox(path) as outbox:
        outbox.step_messages = 2
        async with outbox.store.write("t") as tx:  # a stage whose owner died after one step
            dead = await tx.open_stage("dead")
            await tx.insert(["d1", "d2"], ["dead"] * 2, [None] * 2, envelopes(2, "dead"), stage=dead)
        async with outbox.store.write("t") as tx:  # and one that died after its seal
            live = await tx.open_stage("live")
            await tx.insert(["l1", "l2", "l3"], ["live"] * 3, [None] * 3, envelopes(3, "live"), stage=live)
            assert await tx.seal_stage(live, 3)
        await outbox.sweep_stages()  # the dead one is too fresh to be taken for dead yet
        assert [r[0] for r in staged_rows(path)] == ["d1", "d2"]
        await outbox.sweep_stages(stale=0)
        assert staged_rows(path) == []
        assert sorted(m.id for m in await outbox.claim("w", 100, 60)) == ["l1", "l2", "l3"]
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*) FROM messages WHERE batch_id = 'dead'").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM contents").fetchone() == (3,)


async def test_a_bulk_in_steps_through_the_app_is_delivered_once_each(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    body = {
        "subject": "Hi {{ n }}",
        "text": "x",
        "recipients": [{"to": f"u{i}@example.com", "context": {"n": i}} for i in range(30)],
    }
    async with running(smtp_port, handler, tmp_path) as svc:
        svc.outbox.step_messages = 4  # type: ignore[attr-defined]
        r = await svc.client.post("/api/messages/bulk", json=body, headers=AUTH)
        assert r.status_code == 202, await r.get_data(as_text=True)
        batch = (await r.get_json())["batch_id"]
        await svc.delivered(30)
        await svc.settle()
        assert sorted(g.rcpt_tos[0] for g in handler.received) == sorted(f"u{i}@example.com" for i in range(30))
        r = await svc.client.get(f"/api/batches/{batch}", headers=AUTH)
        assert (await r.get_json())["counts"] == {"delivered": 30}


def _bulk(n: int) -> dict[str, Any]:
    return {
        "subject": "Hi {{ n }}",
        "text": "Dear {{ n }}, " + "x" * 500,
        "recipients": [{"to": f"b{i}@example.com", "context": {"n": i}} for i in range(n)],
    }


def _start(tmp_path: Path, env: dict[str, str], port: int, name: str) -> subprocess.Popen[bytes]:
    with (tmp_path / f"{name}.log").open("wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "hypercorn", "asgi:app", "--bind", f"127.0.0.1:{port}"],
            cwd=tmp_path,
            env={**env, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def _ready(base: str, proc: subprocess.Popen[bytes], tmp_path: Path, name: str) -> None:
    async with httpx.AsyncClient(base_url=base) as client:
        for _ in range(600):  # a guard against hanging, not a timed assertion
            if proc.poll() is not None:
                break
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError((tmp_path / f"{name}.log").read_text())


async def _until(cond: Callable[[], bool], what: str) -> None:
    for _ in range(3000):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_sigkill_in_the_middle_of_a_bulk_store_delivers_none_of_it_and_the_retry_works(
    tmp_path: Path,
) -> None:
    n = 4000
    db = tmp_path / "outbox.sqlite3"
    handler = RecordingHandler()
    async with smtp_server(handler) as smtp_port:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": str(smtp_port),
            "MAIL_DEFAULT_SENDER": "svc@example.com",
            "MAILSVC_DATABASE_URL": f"sqlite:///{db}",
            "MAILSVC_API_KEYS": "k",
            "MAILSVC_SECURE_COOKIES": "false",
            "MAILSVC_POLL_INTERVAL": "0.05",
            "MAILSVC_MAX_BATCH": str(n),
            "MAILSVC_RATE_LIMIT": "0",
        }
        headers = {"Authorization": "Bearer k", "Idempotency-Key": "bulk-1"}
        first = _start(tmp_path, env, port, "first")
        try:
            await _ready(base, first, tmp_path, "first")
            async with httpx.AsyncClient(base_url=base, timeout=120) as client:
                post = asyncio.ensure_future(client.post("/api/messages/bulk", json=_bulk(n), headers=headers))
                await _until(lambda: len(staged_rows(db)) >= 250 or post.done(), "a first step stored")
                os.killpg(first.pid, signal.SIGKILL)  # the whole group: hypercorn and its worker child
                first.wait()
                with pytest.raises(httpx.TransportError):
                    await post
        finally:
            stop_group(first)
        left = staged_rows(db)
        assert left and len(left) < n  # killed between two steps: some rows, unsealed
        second = _start(tmp_path, env, port, "second")
        try:
            await _ready(base, second, tmp_path, "second")
            async with httpx.AsyncClient(base_url=base, timeout=120) as client:
                one = {"to": "marker@example.com", "subject": "m", "text": "m"}
                assert (
                    await client.post("/api/messages", json=one, headers={"Authorization": "Bearer k"})
                ).status_code == 202
                await _until(lambda: bool(handler.received), "the marker delivered")
                assert [g.rcpt_tos for g in handler.received] == [["marker@example.com"]]
                r = await client.get(f"/api/batches/{left[0][1]}", headers={"Authorization": "Bearer k"})
                assert r.status_code == 404
                r = await client.post("/api/messages/bulk", json=_bulk(n), headers=headers)
                assert r.status_code == 202 and "Idempotent-Replayed" not in r.headers, r.text
                batch = r.json()["batch_id"]
                assert batch != left[0][1]
                await _until(lambda: len(handler.received) >= n + 1, "the retried batch delivered")
                got = sorted(g.rcpt_tos[0] for g in handler.received[1:])
                assert got == sorted(f"b{i}@example.com" for i in range(n))  # each once, none of the killed one
        finally:
            stop_group(second)
    async with SqliteOutbox(db) as outbox:
        await outbox.sweep_stages(stale=0)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (n + 1,)
        assert conn.execute("SELECT count(*) FROM stages").fetchone() == (0,)
