"""CSS inlining: templates that carry the marker get their ``<style>`` rules inlined; nothing is fetched.

Real parts: the library renders from a template folder and sends over SMTP to an aiosmtpd server, the
service's previews page renders through the app, and a real TCP listener proves that a stylesheet link
is never requested.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mailsvc import Mail, MailConfig
from mailsvc.app import create_app
from mailsvc.config import ServiceConfig
from mailsvc.cssinline import MARKER
from mailsvc.rendering import TemplateRenderer
from tests.helpers import config
from tests.servers import RecordingHandler, smtp_server

STYLED = (
    MARKER
    + """
<html><head><style>
p.lead { color: #b00020; font-weight: bold }
@media (max-width: 600px) { p.lead { font-size: 18px } }
</style></head>
<body><p class="lead">Hi {{ name }}</p><p>plain</p></body></html>
"""
)


def _folder(tmp_path: Path, html: str, name: str = "styled") -> Path:
    folder = tmp_path / "email"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.html").write_text(html)
    (folder / f"{name}.subject.txt").write_text("Hello {{ name }}")
    return folder


def test_a_marked_template_gets_inline_styles_and_keeps_its_media_queries(tmp_path: Path) -> None:
    _, text, html = TemplateRenderer(_folder(tmp_path, STYLED)).render_parts("styled", {"name": "<Ann>"})
    assert html is not None and text is not None
    assert '<p class="lead" style="color: #b00020;font-weight: bold;">Hi &lt;Ann&gt;</p>' in html
    assert "@media (max-width: 600px)" in html  # cannot be inlined: kept in a <style> block
    assert "p.lead { color" not in html  # the inlined rule itself is gone from the head
    assert "mailsvc: inline-css" not in html  # the marker is a Jinja comment: it renders as nothing
    assert "Hi <Ann>" in text and "color" not in text  # the derived text part is from the inlined HTML, no CSS


def test_an_unmarked_template_is_sent_as_written(tmp_path: Path) -> None:
    _, _, html = TemplateRenderer(_folder(tmp_path, STYLED.replace(MARKER, ""))).render_parts("styled", {"name": "A"})
    assert html is not None and 'style="' not in html and "p.lead { color" in html


@contextmanager
def _listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP listener that records every connection's first bytes: a fetch of the stylesheet would show here."""
    seen: list[bytes] = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    seen.append(conn.recv(1024))
                except OSError:
                    seen.append(b"")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1], seen
    finally:
        stop.set()
        thread.join()
        srv.close()


def test_stylesheet_links_and_imports_are_never_fetched(tmp_path: Path) -> None:
    with _listener() as (port, seen):
        hostile = (
            MARKER + f'<html><head><link rel="stylesheet" href="http://127.0.0.1:{port}/x.css">'
            f"<style>@import url(http://127.0.0.1:{port}/y.css); p {{ color: red }}</style>"
            f'<link rel="stylesheet" href="file:///etc/passwd"></head><body><p>x</p></body></html>'
        )
        _, _, html = TemplateRenderer(_folder(tmp_path, hostile)).render_parts("styled", {"name": "Ann"})
    assert seen == []
    assert html is not None and '<p style="color: red;">x</p>' in html and "root:" not in html


async def test_the_library_sends_the_inlined_html(tmp_path: Path) -> None:
    handler = RecordingHandler()
    async with smtp_server(handler) as port:
        mail = Mail(config=config(port), templates=_folder(tmp_path, STYLED))
        try:
            msg = mail.render_message("styled", {"name": "Ann"}, recipients=["ann@example.com"])
            await mail.send(msg)
        finally:
            await mail.state.aclose()
    [received] = handler.received
    html_part = received.message.get_body(("html",))
    assert html_part is not None
    assert 'style="color: #b00020;font-weight: bold;"' in html_part.get_content()


async def test_the_service_renders_a_marked_project_template_inlined(tmp_path: Path) -> None:
    folder = _folder(tmp_path, STYLED)
    (folder / "styled.sample.json").write_text('{"name": "Ann"}')
    app = create_app(
        MailConfig(),
        ServiceConfig(
            database_url=f"sqlite:///{tmp_path}/o.sqlite3", dev_smtp_port=0, workers=0, templates=folder.parent
        ),
    )
    async with app.test_app() as served:
        page = await (await served.test_client().get("/previews/styled/html")).get_data(as_text=True)
    assert "color: #b00020;font-weight: bold;" in page


@pytest.mark.parametrize("css", ["p { color: ", "}}}} p {", "p { color: red } @media {"])
def test_broken_css_never_breaks_a_send(tmp_path: Path, css: str) -> None:
    """css-inline is lenient: a malformed rule is dropped or kept as written, the message still renders."""
    bad = MARKER + f"<html><head><style>{css}</style></head><body><p>Hi {{{{ name }}}}</p></body></html>"
    _, text, html = TemplateRenderer(_folder(tmp_path, bad)).render_parts("styled", {"name": "Ann"})
    assert html is not None and "Hi Ann" in html and text is not None and "Hi Ann" in text
