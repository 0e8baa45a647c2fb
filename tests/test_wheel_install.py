"""The built wheel, installed in a fresh venv, serves every page from an empty directory (issue 14, friction 3).

A real build (``pip wheel`` of a copy of the sources), a real install into a new venv,
a real ``mailsvc serve`` process started in an empty directory with environment
variables only, and real HTTP. Nothing of the checkout is on that process's path:
the test checks ``mailsvc.__file__`` is the installed copy. The venv gets the
dependencies by a ``.pth`` line naming this test run's own site-packages (a plain
path entry, so the checkout's editable-install hook there is not loaded), which keeps
the test offline and fast; ``mailsvc`` itself resolves to the venv's own copy first.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Installed:
    venv: Path
    wheel: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


def _run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any mailsvc setting or PYTHONPATH (nothing of the checkout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "MAILSVC_")) and k != "PYTHONPATH"}
    return {**env, **extra}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy: pip builds in place, and the checkout stays as it is.
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "mailsvc", src / "mailsvc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, src)
    (wheel,) = wheels.glob("mailsvc-*.whl")

    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    return Installed(venv, wheel)


def test_the_wheel_holds_the_templates(installed: Installed) -> None:
    import zipfile

    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for page in ("base.html", "form.html", "signin.html", "sent.html", "inbox.html", "previews.html", "docs.html"):
        assert f"mailsvc/templates/{page}" in names, page
    assert "mailsvc/templates/email/welcome.html" in names and "mailsvc/settings.py" in names
    assert not [n for n in names if not n.startswith(("mailsvc/", "mailsvc-"))], "only the package is installed"


def _free_port() -> int:
    """The dev SMTP port must be given (MAIL_PORT >= 1): pick one and pass it (small race, accepted)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(installed: Installed, tmp_path: Path) -> Iterator[str]:
    """``mailsvc serve`` from the venv, started in an empty directory; its base URL."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = _clean_env(
        MAILSVC_DEV_SMTP_PORT=str(_free_port()),
        MAILSVC_DATABASE_URL=f"sqlite:///{tmp_path}/outbox.sqlite3",
        MAILSVC_POLL_INTERVAL="0.05",
    )
    where = _run(installed.bin / "python", "-c", "import mailsvc; print(mailsvc.__file__)", cwd=empty, env=env)
    assert Path(where.strip()).is_relative_to(installed.venv), where

    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [installed.bin / "mailsvc", "serve", "--bind", "127.0.0.1:0"],
            cwd=empty,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stop the whole group, whatever it started
        )
        try:
            base = None
            for _ in range(600):  # start-up guard, not a timed assertion
                found = re.search(r"Running on (http://127\.0\.0\.1:\d+)", log_path.read_text(errors="replace"))
                if found or proc.poll() is not None:
                    base = found.group(1) if found else None
                    break
                time.sleep(0.05)
            assert base is not None and proc.poll() is None, log_path.read_text(errors="replace")
            yield base
        finally:
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(wait)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
    output = log_path.read_text(errors="replace")
    assert "Traceback" not in output and "TemplateNotFound" not in output, output
    assert not list(empty.iterdir()), "the service wrote into its working directory"


def test_the_installed_service_serves_every_page_and_delivers_from_an_empty_directory(served: str) -> None:
    with httpx.Client(base_url=served, timeout=30) as client:
        for path in ("/", "/signin", "/inbox", "/previews", "/previews/welcome", "/docs", "/openapi.json", "/healthz"):
            response = client.get(path)
            assert response.status_code == 200, (path, response.status_code, response.text[:500])
        assert 'href="/previews/thank_you"' in client.get("/previews").text  # the packaged email templates

        sent = client.post("/api/messages", json={"to": "ann@example.com", "subject": "From the wheel", "text": "Hi"})
        assert sent.status_code == 202, sent.text
        welcome = {"to": "bob@example.com", "template": "welcome", "context": {"name": "Bob", "url": "https://x.test"}}
        assert client.post("/api/messages", json=welcome).status_code == 202

        form = client.get("/").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token, form
        data = {"csrf_token": token.group(1), "email": "cy@example.com", "subject": "Via the form", "message": "Hi"}
        page = client.post("/", data=data)
        assert page.status_code == 200 and "/api/messages/" in page.text, page.text[:500]  # sent.html

        subjects: set[str] = set()
        for _ in range(300):  # delivery guard, not a timed assertion
            subjects = {m["subject"] for m in client.get("/api/inbox").json()["messages"]}
            if len(subjects) >= 3:
                break
            time.sleep(0.05)
        assert subjects == {"From the wheel", "Welcome aboard, Bob!", "Via the form"}
        (first, *_) = client.get("/api/inbox", params={"q": "wheel"}).json()["messages"]
        assert client.get(f"/inbox/{first['id']}").status_code == 200
