"""A real hypercorn serving the app on embedded defaults, and Debian's Chromium driven by Playwright.

Why Debian's Chromium at /usr/bin/chromium: Playwright's own browser download is not
allowed here (and CI installs ``chromium`` with apt). Without it the tests skip
locally, but fail under CI (``CI`` set), where a skip would hide a broken setup.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "tests" / "screenshots"
WIDTHS = {"mobile": 375, "desktop": 1440}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _free_port() -> int:
    # Only for the dev SMTP port (settings need a number); hypercorn itself binds port 0.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def dev_smtp_port() -> int:
    return _free_port()


@pytest.fixture(scope="session")
def base_url(tmp_path_factory: pytest.TempPathFactory, dev_smtp_port: int) -> Iterator[str]:
    """``hypercorn asgi:app`` as a real process with nothing configured but where to keep its files."""
    tmp = tmp_path_factory.mktemp("browser-service")
    log_path = tmp / "hypercorn.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "MAILSVC_"))}
    # A project folder with one broken template beside the packaged ones, so the previews' error page is exercised too.
    templates = tmp / "templates"
    shutil.copytree(REPO / "templates", templates)
    (templates / "email").mkdir(exist_ok=True)
    (templates / "email" / "broken.html").write_text("<p>Hello {{ name }}</p>\n<p>{% if %}oops{% endif %}</p>\n")
    env |= {
        "MAILSVC_DATABASE_URL": f"sqlite:///{tmp}/o.sqlite3",
        "MAILSVC_DEV_SMTP_PORT": str(dev_smtp_port),
        "MAILSVC_TEMPLATES": str(templates),
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
        deadline = time.monotonic() + 60  # start-up wait only, not an assertion about speed
        while True:
            text = log_path.read_text(errors="replace")
            found = re.search(r"Running on (http://127\.0\.0\.1:\d+)", text)
            if found:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"hypercorn did not start (exit {proc.poll()}):\n{text}")
            time.sleep(0.05)
        assert "runs open" in text  # the dev-mode warning is logged at start-up
        yield found.group(1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def browser() -> Iterator[object]:
    """Per test, not per session: Playwright's sync API keeps an event loop running in this
    thread while it is open, which would break every asyncio test that runs after it."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run should have installed Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
