"""End to end: ``hypercorn asgi:app`` as a real process, httpx as the client, aiosmtpd as the relay."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.procs import free_port, stop_group
from tests.servers import RecordingHandler, smtp_server

ROOT = Path(__file__).resolve().parent.parent
KEY = "e2e-key"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[str, RecordingHandler]]:
    handler = RecordingHandler()
    async with smtp_server(handler) as smtp_port:
        port = free_port()
        env = {
            **os.environ,
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": str(smtp_port),
            "MAIL_DEFAULT_SENDER": "svc@example.com",
            "MAILSVC_DATABASE_URL": f"sqlite:///{tmp_path}/outbox.sqlite3",
            "MAILSVC_API_KEYS": KEY,
            "MAILSVC_SECURE_COOKIES": "false",
            "MAILSVC_POLL_INTERVAL": "0.05",
        }
        log = (tmp_path / "hypercorn.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "hypercorn", "asgi:app", "--bind", f"127.0.0.1:{port}"],
            cwd=tmp_path,
            env={**env, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # hypercorn spawns a worker child: stop the whole group
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=base) as client:
                for _ in range(300):  # wait for start-up (guard, not an assertion on time)
                    if proc.poll() is not None:
                        break
                    try:
                        if (await client.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
            assert proc.poll() is None, (tmp_path / "hypercorn.log").read_text()
            yield base, handler
        finally:
            stop_group(proc)
            log.close()


async def _wait(handler: RecordingHandler, n: int) -> None:
    for _ in range(600):
        if len(handler.received) >= n:
            return
        await asyncio.sleep(0.05)


def _field(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, name
    return m.group(1)


async def test_json_and_form_through_real_hypercorn(service: tuple[str, RecordingHandler]) -> None:
    base, handler = service
    async with httpx.AsyncClient(base_url=base, follow_redirects=False) as client:
        r = await client.post(
            "/api/messages",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"to": "Ann <ann@example.com>", "subject": "Via JSON", "text": "hello"},
        )
        assert r.status_code == 202, r.text
        id_ = r.json()["id"]
        r = await client.post("/api/messages", json={"to": "a@example.com", "subject": "s", "text": "t"})
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"

        # The browser flow: sign in, fetch the form, submit it with an attachment.
        page = (await client.get("/signin")).text
        r = await client.post("/signin", data={"csrf_token": _field(page, "csrf_token"), "key": KEY, "next": "/"})
        assert r.status_code == 302
        page = (await client.get("/")).text
        r = await client.post(
            "/",
            data={
                "csrf_token": _field(page, "csrf_token"),
                "nonce": _field(page, "nonce"),
                "email": "bob@example.com, Cy <cy@example.com>",
                "subject": "Via form",
                "message": "see file",
                "template": "",
            },
            files={"attachments": ("notes.txt", b"line 1\nline 2\n", "text/plain")},
        )
        assert r.status_code == 200 and "Message queued" in r.text, r.text

        await _wait(handler, 2)
        by_subject = {g.message["Subject"]: g for g in handler.received}
        assert set(by_subject) == {"Via JSON", "Via form"}
        assert by_subject["Via JSON"].rcpt_tos == ["ann@example.com"]
        form_mail = by_subject["Via form"]
        assert sorted(form_mail.rcpt_tos) == ["bob@example.com", "cy@example.com"]
        [att] = list(form_mail.message.iter_attachments())
        assert att.get_filename() == "notes.txt" and att.get_content() == "line 1\nline 2\n"

        for _ in range(200):
            status = (await client.get(f"/api/messages/{id_}", headers={"Authorization": f"Bearer {KEY}"})).json()
            if status["state"] == "delivered":
                break
            await asyncio.sleep(0.05)
        assert status["state"] == "delivered" and by_subject["Via JSON"].message["Message-ID"] == status["message_id"]


def _hypercorn_refuses(tmp_path: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run ``hypercorn asgi:app`` until it exits (it must, on its own): its status and its output."""
    log_path = tmp_path / "refused.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hypercorn", "asgi:app", "--bind", f"127.0.0.1:{free_port()}"],
            cwd=tmp_path,
            env={
                **os.environ,
                "MAILSVC_DATABASE_URL": f"sqlite:///{tmp_path}/outbox.sqlite3",
                **env,
                "PYTHONPATH": str(ROOT),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            status = proc.wait(60)
        finally:
            stop_group(proc)  # the worker child too, whatever happened
    return status, log_path.read_text(errors="replace")


def test_hypercorn_exits_non_zero_when_the_settings_refuse_to_start(tmp_path: Path) -> None:
    """An open relay is refused at import; hypercorn's supervisor used to report that as success (exit 0)."""
    status, output = _hypercorn_refuses(
        tmp_path, {"MAIL_SERVER": "smtp.example.com", "MAIL_DEFAULT_SENDER": "s@example.com", "MAILSVC_API_KEYS": ""}
    )
    assert status != 0, output
    assert "MAILSVC_API_KEYS" in output and "open relay" in output


def test_hypercorn_exits_non_zero_when_a_part_cannot_start(tmp_path: Path) -> None:
    """The dev inbox's SMTP port is taken: the lifespan fails, and so does the process."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, output = _hypercorn_refuses(tmp_path, {"MAILSVC_DEV_SMTP_PORT": str(port)})
    assert status != 0, output
    assert "MAILSVC_DEV_SMTP_PORT" in output


@pytest.mark.parametrize("case", ["open relay", "dev port taken"])
def test_mailsvc_serve_refuses_to_start_in_one_line(tmp_path: Path, case: str) -> None:
    """Every start-up refusal under ``mailsvc serve``: one line saying what to change, a non-zero exit, no traceback."""
    env = {**os.environ, "MAILSVC_DATABASE_URL": f"sqlite:///{tmp_path}/o.sqlite3", "PYTHONPATH": str(ROOT)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if case == "open relay":
            env |= {"MAIL_SERVER": "smtp.example.com", "MAIL_DEFAULT_SENDER": "s@example.com", "MAILSVC_API_KEYS": ""}
        else:
            env |= {"MAILSVC_DEV_SMTP_PORT": str(taken.getsockname()[1])}
        proc = subprocess.run(
            [sys.executable, "-m", "mailsvc.cli", "serve", "--bind", f"127.0.0.1:{free_port()}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            start_new_session=True,
        )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    named = "MAILSVC_API_KEYS" if case == "open relay" else "MAILSVC_DEV_SMTP_PORT"
    assert (
        [line for line in proc.stderr.splitlines() if line.startswith("mailsvc:")]
        == [line for line in proc.stderr.splitlines() if line.startswith("mailsvc:") and named in line]
        != []
    )
