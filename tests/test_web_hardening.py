"""Issue 13, findings 8 and 10 through the real app: sign-in redirects, page headers, 405 Allow."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers import RecordingHandler
from tests.webkit import KEY, hidden, running


def same_site(location: str) -> bool:
    """A path a browser resolves on this host: it drops tabs and newlines and reads a backslash as a slash."""
    seen = location.replace("\t", "").replace("\r", "").replace("\n", "").replace("\\", "/")
    return seen.startswith("/") and not seen.startswith("//") and not any(ord(c) < 0x21 for c in location)


@pytest.mark.parametrize(
    "target",
    [
        "/%09/evil.test",
        "/\t/evil.test",
        "/\\evil.test",
        "//evil.test",
        "/\r\nSet-Cookie: x=1",
        "https://evil.test/",
        "javascript:alert(1)",
        "/ /evil.test",
    ],
)
async def test_finding_8_next_after_sign_in_stays_on_this_site(
    target: str, smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    async with running(smtp_port, handler, tmp_path, workers=0) as svc:
        page = await svc.client.get("/signin", query_string={"next": target})
        assert page.status_code == 200
        html = await page.get_data(as_text=True)
        r = await svc.client.post(
            "/signin", form={"key": KEY, "next": target, "csrf_token": hidden(html, "csrf_token")}
        )
        assert r.status_code == 302, await r.get_data(as_text=True)
        location = r.headers["Location"]
        assert same_site(location), location
        assert same_site(hidden(html, "next"))  # what the page carries into the form, decoded from the query


async def test_a_same_site_next_is_kept(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with running(smtp_port, handler, tmp_path, workers=0) as svc:
        html = await (await svc.client.get("/signin")).get_data(as_text=True)
        r = await svc.client.post(
            "/signin", form={"key": KEY, "next": "/?tab=bulk", "csrf_token": hidden(html, "csrf_token")}
        )
        assert r.status_code == 302 and r.headers["Location"] == "/?tab=bulk"


@pytest.mark.parametrize("path", ["/signin", "/docs"])
async def test_finding_10_every_html_page_forbids_framing_and_script(
    path: str, smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    async with running(smtp_port, handler, tmp_path, workers=0) as svc:
        r = await svc.client.get(path)
        assert r.status_code == 200 and r.mimetype == "text/html"
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "same-origin"


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("DELETE", "/api/messages", {"POST"}),
        ("PUT", "/api/messages/bulk", {"POST"}),
        ("POST", "/api/messages/abc", {"GET", "HEAD"}),
    ],
)
async def test_finding_10_a_405_says_which_methods_are_allowed(
    method: str, path: str, allowed: set[str], smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    async with running(smtp_port, handler, tmp_path, workers=0) as svc:
        r = await svc.client.open(path, method=method)
        assert r.status_code == 405
        assert r.mimetype == "application/problem+json"
        assert allowed <= {m.strip() for m in r.headers["Allow"].split(",")}
