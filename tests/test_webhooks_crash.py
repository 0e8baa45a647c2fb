"""SIGKILL between a state change and its webhook: the event is kept, and the webhook arrives after restart.

The service runs as ``hypercorn asgi:app`` in a session of its own and is killed as a group (hypercorn's
worker child included). The receiver answers 500 until the kill, so the delivered event's webhook is still
owed when the process dies; a new process on the same outbox must send it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.procs import free_port, stop_group
from tests.servers import RecordingHandler, smtp_server
from tests.test_webhooks import SECRET, Receiver, events_of

ROOT = Path(__file__).resolve().parent.parent
KEY = "crash-key"


@contextmanager
def hypercorn(env: dict[str, str], tmp_path: Path, port: int, name: str) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp_path / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "asgi:app", "--bind", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        stop_group(proc)
        log.close()


async def ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(base_url=base) as client:
        for _ in range(400):  # a start-up guard, not a timing assertion
            assert proc.poll() is None, "the service exited at start-up"
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the service never became ready")


async def until(pred: object, within: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not pred():  # type: ignore[operator]
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


async def test_a_webhook_owed_at_sigkill_arrives_after_restart(tmp_path: Path) -> None:
    alive = {"yes": False}
    handler = RecordingHandler()
    async with smtp_server(handler) as smtp_port, Receiver(lambda n: 200 if alive["yes"] else 500) as rx:
        hooks = [{"name": "crm", "url": rx.url, "secret": SECRET, "events": ["delivered"]}]
        env = {
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": str(smtp_port),
            "MAIL_DEFAULT_SENDER": "svc@example.com",
            "MAILSVC_DATABASE_URL": f"sqlite:///{tmp_path}/outbox.sqlite3",
            "MAILSVC_API_KEYS": KEY,
            "MAILSVC_POLL_INTERVAL": "0.05",
            "MAILSVC_WEBHOOKS": json.dumps(hooks),
            "MAILSVC_WEBHOOK_RETRY_FIRST": "0.05",
            # A probe in flight at the kill is held by its lease (3 x this + 5 s) before the restart takes it.
            "MAILSVC_WEBHOOK_TIMEOUT": "1",
        }
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with hypercorn(env, tmp_path, port, "first") as first:
            await ready(base, first)
            async with httpx.AsyncClient(base_url=base) as client:
                r = await client.post(
                    "/api/messages",
                    headers={"Authorization": f"Bearer {KEY}"},
                    json={"to": "ann@example.com", "subject": "s", "text": "t"},
                )
                assert r.status_code == 202, r.text
                id_ = r.json()["id"]
            await until(lambda: len(handler.received) == 1 and rx.count >= 1)  # delivered; its webhook refused
            os.killpg(first.pid, signal.SIGKILL)  # the whole group, hypercorn's worker child too
            first.wait(10)
        assert rx.statuses and set(rx.statuses) == {500}
        alive["yes"] = True
        with hypercorn(env, tmp_path, port, "second") as second:
            await ready(base, second)
            await until(lambda: 200 in rx.statuses)
            async with httpx.AsyncClient(base_url=base) as client:
                r = await client.get(f"/api/events?message={id_}", headers={"Authorization": f"Bearer {KEY}"})
        delivered = [e for e in events_of(rx.verified()) if e["type"] == "delivered"]
        assert {e["message"] for e in delivered} == {id_}
        assert [e["type"] for e in r.json()["events"]] == ["queued", "sending", "delivered"]  # nothing lost or doubled
        assert len(handler.received) == 1  # and the mail itself was not sent again
