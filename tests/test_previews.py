"""Template previews through the real app: the packaged templates plus a project folder of real files.

The project folder holds only the broken and odd templates; ``welcome`` and ``thank_you``
come from the package, so every test here also runs the search path (project first).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from quart.typing import TestClientProtocol as Client

from mailsvc import MailConfig
from mailsvc.app import create_app
from mailsvc.config import ServiceConfig, WebConfig


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    email = folder / "email"
    email.mkdir(parents=True)
    (email / "broken.html").write_text("<p>Hi {{ name }}</p>\n<p>{% if %}</p>\n")
    (email / "broken.sample.json").write_text('{"name": "Ann"}')
    (email / "needs_sample.txt").write_text("Hello\nDear {{ customer }},\n")
    (email / "bad_json.txt").write_text("Hi {{ name }}\n")
    (email / "bad_json.sample.json").write_text('{\n  "name": "Ann",\n}\n')
    (email / "nested").mkdir()
    (email / "nested" / "oops.txt").write_text("one\ntwo\n{{ 1 / 0 }}\n")
    (email / "xss.html").write_text("<p>{{ name }}</p><script>alert(1)</script>")
    (email / "xss.sample.json").write_text(json.dumps({"name": "<img src=x onerror=alert(1)>"}))
    return folder


@pytest.fixture
async def client(tmp_path: Path, templates: Path) -> AsyncIterator[Client]:
    app = create_app(
        MailConfig(),
        ServiceConfig(database_url=f"sqlite:///{tmp_path}/o.sqlite3", dev_smtp_port=0, workers=0, templates=templates),
    )
    async with app.test_app() as served:
        yield served.test_client()


async def test_index_lists_every_template(client: Client) -> None:
    response = await client.get("/previews")
    assert response.status_code == 200
    page = await response.get_data(as_text=True)
    for name in ("welcome", "thank_you", "broken", "needs_sample", "bad_json", "nested/oops", "xss"):
        assert f'href="/previews/{name}"' in page, name
    assert "Welcome aboard, Ann!" in page  # subjects rendered with the sample context
    assert page.count("badge bad") == 4 and page.count("badge ok") == 3


async def test_preview_renders_all_parts_with_sample_context(client: Client) -> None:
    response = await client.get("/previews/welcome")
    assert response.status_code == 200
    page = await response.get_data(as_text=True)
    assert "Welcome aboard, Ann!" in page and "Sign in at https://example.com/login." in page
    iframe = page[page.index("<iframe") : page.index("</iframe>")]
    assert 'src="/previews/welcome/html"' in iframe and "allow-scripts" not in iframe

    frame = await client.get("/previews/welcome/html")
    assert "default-src 'none'" in frame.headers["Content-Security-Policy"]
    assert '<a href="https://example.com/login">Sign in</a>' in await frame.get_data(as_text=True)


async def test_html_part_is_autoescaped_and_scriptless(client: Client) -> None:
    frame = await client.get("/previews/xss/html")
    html = await frame.get_data(as_text=True)
    assert "&lt;img src=x onerror=alert(1)&gt;" in html  # the sample value is escaped
    assert (
        "sandbox" in frame.headers["Content-Security-Policy"]
        and "script-src" not in frame.headers["Content-Security-Policy"]
    )


@pytest.mark.parametrize(
    "name, where, message",
    [
        ("broken", "broken.html, line 2", "syntax error"),
        ("needs_sample", "needs_sample.txt, line 2", "&#39;customer&#39; is undefined (add needs_sample.sample.json"),
        ("bad_json", "bad_json.sample.json, line 3", "invalid JSON"),
        ("nested/oops", "nested/oops.txt, line 3", "ZeroDivisionError"),
    ],
)
async def test_template_error_shows_file_and_line_not_500(client: Client, name: str, where: str, message: str) -> None:
    response = await client.get(f"/previews/{name}")
    assert response.status_code == 422
    page = await response.get_data(as_text=True)
    assert where in page and message in page
    assert 'class="hit"' in page  # the offending source line is highlighted
    assert (await client.get(f"/previews/{name}/html")).status_code == 404


@pytest.mark.parametrize("name", ["nope", "welcome.html", "..%2F..%2Fsettings", "nested"])
async def test_unknown_or_unsafe_names_are_404(client: Client, name: str) -> None:
    assert (await client.get(f"/previews/{name}")).status_code == 404


async def test_edits_show_without_restart(client: Client, templates: Path) -> None:
    """A project file overrides the packaged one of the same name, at once; the other parts stay packaged."""
    assert "Welcome aboard, Ann!" in await (await client.get("/previews/welcome")).get_data(as_text=True)
    (templates / "email" / "welcome.subject.txt").write_text("Hello again, {{ name }}")
    page = await (await client.get("/previews/welcome")).get_data(as_text=True)
    assert "Hello again, Ann" in page and "Welcome aboard" not in page
    assert "https://example.com/login" in page  # welcome.txt, still the packaged one


async def test_a_broken_override_is_shown_in_the_project_file(client: Client, templates: Path) -> None:
    (templates / "email" / "thank_you.html").write_text("<p>Thanks {{ name }}</p>\n<p>{{ 1 / 0 }}</p>\n")
    response = await client.get("/previews/thank_you")
    page = await response.get_data(as_text=True)
    assert response.status_code == 422
    assert "thank_you.html" in page and "ZeroDivisionError" in page and "{{ 1 / 0 }}" in page


async def test_previews_are_404_with_a_real_relay(tmp_path: Path, templates: Path) -> None:
    app = create_app(
        MailConfig(),
        ServiceConfig(
            database_url=f"sqlite:///{tmp_path}/o.sqlite3",
            dev_mode=False,
            workers=0,
            templates=templates,
            web=WebConfig(allow_anonymous=True),
        ),
    )
    async with app.test_app() as served:
        assert (await served.test_client().get("/previews")).status_code == 404
