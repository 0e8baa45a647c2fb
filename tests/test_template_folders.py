"""Templates ship in the package; a project's folder overrides them file by file; a missing one stops start-up.

The wheel itself, installed in a fresh venv and served from an empty directory, is
tests/test_wheel_install.py; these run the same rules in-process and through the CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from quart.typing import TestClientProtocol as Client

from mailsvc import MailConfig
from mailsvc.app import create_app
from mailsvc.config import ServiceConfig
from mailsvc.errors import ConfigError
from mailsvc.rendering import TemplateRenderer
from mailsvc.templatepaths import PACKAGED, email_folders

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("base.html", "docs.html", "form.html", "inbox.html", "inbox_message.html", "previews.html", "sent.html")


@asynccontextmanager
async def client(tmp_path: Path, templates: Path | None) -> AsyncIterator[Client]:
    app = create_app(
        MailConfig(),
        ServiceConfig(database_url=f"sqlite:///{tmp_path}/o.sqlite3", dev_smtp_port=0, workers=0, templates=templates),
    )
    async with app.test_app() as served:
        yield served.test_client()


def test_the_package_holds_every_page_and_the_example_email_templates() -> None:
    for page in (*PAGES, "previews_show.html", "signin.html"):
        assert (PACKAGED / page).is_file(), page
    assert {"welcome", "thank_you"} <= set(TemplateRenderer(email_folders(None)).names())
    # One copy of each: the project's templates/ holds overrides only (none in this repository).
    assert not [p for p in (ROOT / "templates").rglob("*") if p.suffix in (".html", ".txt", ".json")]


async def test_packaged_templates_serve_every_page_without_a_project_folder(tmp_path: Path) -> None:
    async with client(tmp_path, None) as c:
        for path in ("/", "/inbox", "/previews", "/previews/welcome", "/docs"):
            response = await c.get(path)
            assert response.status_code == 200, path
        assert 'href="/previews/thank_you"' in await (await c.get("/previews")).get_data(as_text=True)


async def test_a_project_page_wins_and_packaged_pages_extend_the_projects_base(tmp_path: Path) -> None:
    project = tmp_path / "templates"
    project.mkdir()
    (project / "form.html").write_text('{% extends "base.html" %}{% block content %}<p>our own form</p>{% endblock %}')
    base = (PACKAGED / "base.html").read_text().replace('<main id="main">', '<p>our banner</p><main id="main">')
    (project / "base.html").write_text(base)
    async with client(tmp_path, project) as c:
        form = await (await c.get("/")).get_data(as_text=True)
        inbox = await (await c.get("/inbox")).get_data(as_text=True)
    assert "our own form" in form and "our banner" in form
    assert "our banner" in inbox and "our own form" not in inbox  # the packaged inbox page, in our base


async def test_a_project_email_template_is_added_beside_the_packaged_ones(tmp_path: Path) -> None:
    (tmp_path / "templates" / "email").mkdir(parents=True)
    (tmp_path / "templates" / "email" / "receipt.txt").write_text("Paid {{ amount }}\n")
    async with client(tmp_path, tmp_path / "templates") as c:
        page = await (await c.get("/previews")).get_data(as_text=True)
    assert all(f'href="/previews/{name}"' in page for name in ("receipt", "welcome", "thank_you"))


@pytest.mark.parametrize("make", ["missing", "file"])
def test_a_template_folder_that_is_not_there_is_refused_by_create_app(tmp_path: Path, make: str) -> None:
    folder = tmp_path / "tempaltes"
    if make == "file":
        folder.write_text("")
    with pytest.raises(ConfigError) as err:
        create_app(MailConfig(), ServiceConfig(database_url=f"sqlite:///{tmp_path}/o.sqlite3", templates=folder))
    assert err.value.setting == "MAILSVC_TEMPLATES" and str(folder) in str(err.value)


def _cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed ``mailsvc`` command line run in ``cwd``, with no project on the path."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "MAILSVC_")) and k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "mailsvc.cli", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_mailsvc_serve_refuses_a_missing_folder_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-templates"
    proc = _cli(
        tmp_path,
        "serve",
        "--bind",
        "127.0.0.1:1",  # never reached: start-up stops first
        MAILSVC_TEMPLATES=str(missing),
        MAILSVC_DATABASE_URL=f"sqlite:///{tmp_path}/o.sqlite3",
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "MAILSVC_TEMPLATES" in lines[0] and str(missing) in lines[0] and "does not exist" in lines[0]


def test_without_a_settings_module_the_cli_runs_on_the_environment(tmp_path: Path) -> None:
    """An empty directory: mailsvc's own settings, the packaged templates (a wheel's `mailsvc serve`)."""
    script = (
        "from mailsvc.cli import load_project_settings as f; s = f(); print(type(s).__module__, s.MAILSVC_TEMPLATES)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "MAILSVC_")) and k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.split() == ["mailsvc.settings", "None"], proc.stderr


def test_a_named_settings_module_that_is_missing_is_still_an_error(tmp_path: Path) -> None:
    proc = _cli(tmp_path, "status", "x", MAILSVC_SETTINGS_MODULE="nosuchsettings")
    assert proc.returncode == 2 and "nosuchsettings" in proc.stderr and "MAILSVC_SETTINGS_MODULE" in proc.stderr


def test_the_checkout_default_is_the_templates_beside_settings_py(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # anywhere: the folder is found beside settings.py, not in the working directory
    monkeypatch.delenv("MAILSVC_TEMPLATES", raising=False)
    from settings import load_settings

    assert load_settings().service_config().templates == ROOT / "templates"


def test_load_settings_refuses_a_missing_folder_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAILSVC_TEMPLATES", str(tmp_path / "gone"))
    from settings import load_settings

    with pytest.raises(SystemExit) as err:
        load_settings()
    assert "MAILSVC_TEMPLATES" in str(err.value) and str(tmp_path / "gone") in str(err.value)
    assert "\n" not in str(err.value)
