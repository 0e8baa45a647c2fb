"""/outbox in a real browser: sign in with a key, list, search, open a timeline, retry now, cancel.

A hypercorn of its own (keys, a real relay): an aiosmtpd relay in a thread answers 451 until the test
lets it accept, and retries are an hour apart, so only "Retry now" sends the deferred message again.
Each page is screenshotted at 375 and 1440 px into a temporary folder (printed with -s) for a person to look at.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import RecordingHandler, threaded_smtp_server

REPO = Path(__file__).resolve().parents[2]
KEY = "browser-outbox-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def relay() -> Iterator[tuple[int, RecordingHandler]]:
    handler = RecordingHandler(data_reply="451 4.3.0 mailbox busy, try again later")
    with threaded_smtp_server(handler) as port:
        yield port, handler


@pytest.fixture
def service(tmp_path: Path, relay: tuple[int, RecordingHandler]) -> Iterator[str]:
    port, _ = relay
    log_path = tmp_path / "hypercorn.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "MAILSVC_"))}
    env |= {
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": str(port),
        "MAIL_DEFAULT_SENDER": "svc@example.com",
        "MAILSVC_DATABASE_URL": f"sqlite:///{tmp_path}/o.sqlite3",
        "MAILSVC_API_KEYS": KEY,
        "MAILSVC_SECURE_COOKIES": "false",
        "MAILSVC_RETRY_FIRST": "3600",
        "MAILSVC_POLL_INTERVAL": "0.05",
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hypercorn", "asgi:app", "--bind", "127.0.0.1:0"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60  # start-up wait only
        while True:
            text = log_path.read_text(errors="replace")
            found = re.search(r"Running on (http://127\.0\.0\.1:\d+)", text)
            if found:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"hypercorn did not start (exit {proc.poll()}):\n{text}")
            time.sleep(0.05)
        yield found.group(1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_state(base: str, id_: str, want: str) -> None:
    deadline = time.monotonic() + 30  # a cap on waiting, not a speed assertion
    while (state := httpx.get(f"{base}/api/messages/{id_}", headers=AUTH).json()["state"]) != want:
        assert time.monotonic() < deadline, f"{id_} stayed {state}, never {want}"
        time.sleep(0.05)


def shoot(page: Any, folder: Path, name: str) -> None:
    for width in (375, 1440):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(folder / f"{name}-{width}.png"), full_page=True)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{name} scrolls sideways at {width}px by {overflow}px"


def test_outbox_page_sign_in_search_timeline_retry_cancel(
    browser: Any, service: str, relay: tuple[int, RecordingHandler], tmp_path_factory: pytest.TempPathFactory
) -> None:
    shots = tmp_path_factory.mktemp("outbox-screenshots")
    print(f"\nscreenshots: {shots}")
    _, handler = relay
    ids = []
    for n in range(3):
        r = httpx.post(
            f"{service}/api/messages",
            headers=AUTH,
            json={"to": f"person{n}@example.com", "subject": f"Hello {n}", "text": "hi", "tags": ["welcome"]},
        )
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    later = (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = httpx.post(
        f"{service}/api/messages",
        headers=AUTH,
        json={"to": "bob@example.com", "subject": "Later", "text": "hi", "send_at": later, "metadata": {"order": "42"}},
    )
    scheduled = r.json()["id"]
    for id_ in ids:
        wait_state(service, id_, "deferred")

    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{service}/outbox")
        assert "/signin" in page.url
        page.get_by_label("API key").fill(KEY)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{service}/outbox")
        assert page.locator('[data-state="deferred"]').inner_text() == "3"
        assert page.locator("#pending").inner_text() == "4"
        assert page.locator("#messages").get_by_text("mailbox busy").count() == 3
        shoot(page, shots, "outbox")

        page.get_by_label("Recipient", exact=True).fill("person1@example.com")
        page.get_by_role("button", name="Search").click()
        page.wait_for_url(re.compile(r".*/outbox\?to=person1%40example\.com.*"))
        links = page.locator("#messages a")
        assert links.count() == 1
        shoot(page, shots, "outbox-search")

        links.first.click()
        page.wait_for_url(f"{service}/outbox/{ids[1]}")
        assert page.locator("#timeline strong").all_inner_texts() == ["queued", "sending", "deferred"]
        shoot(page, shots, "outbox-message")

        handler.data_reply = None  # the relay accepts from now on
        page.get_by_role("button", name="Retry now").click()
        page.wait_for_url(f"{service}/outbox/{ids[1]}?done=retried")
        wait_state(service, ids[1], "delivered")
        page.reload()
        assert page.locator("#message-state").inner_text() == "delivered"
        assert page.locator("#timeline strong").all_inner_texts()[-1] == "delivered"
        assert [r.rcpt_tos for r in handler.received] == [["person1@example.com"]]
        shoot(page, shots, "outbox-retried")

        page.goto(f"{service}/outbox/{scheduled}")
        page.get_by_role("button", name="Cancel").click()
        page.wait_for_url(f"{service}/outbox/{scheduled}?done=cancelled")
        assert page.locator("#message-state").inner_text() == "cancelled"
        shoot(page, shots, "outbox-cancelled")

        page.goto(f"{service}/outbox?status=nope")
        assert "status: one of" in page.locator("#query-error").inner_text()
        page.goto(f"{service}/outbox")
        shoot(page, shots, "outbox-after")
    finally:
        context.close()
