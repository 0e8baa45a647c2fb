"""The browser form: sign-in, CSRF, errors next to fields with values kept, attachments, delivery."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from quart.datastructures import FileStorage
from werkzeug.datastructures import MultiDict

from tests.servers import RecordingHandler
from tests.webkit import KEY, Svc, hidden, running


async def _signed_in_form(svc: Svc) -> dict[str, str]:
    """Sign in with the API key and return the form's hidden fields."""
    page = await (await svc.client.get("/signin")).get_data(as_text=True)
    r = await svc.client.post("/signin", form={"csrf_token": hidden(page, "csrf_token"), "key": KEY, "next": "/"})
    assert r.status_code == 302 and r.headers["Location"] == "/"
    page = await (await svc.client.get("/")).get_data(as_text=True)
    return {"csrf_token": hidden(page, "csrf_token"), "nonce": hidden(page, "nonce")}


async def test_form_with_attachment_is_delivered(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with running(smtp_port, handler, tmp_path) as svc:
        fields = await _signed_in_form(svc)
        r = await svc.client.post(
            "/",
            form={
                **fields,
                "email": '"Doe, Ann" <ann@example.com>, bob@example.com',
                "subject": "Report",
                "message": "See attached.",
                "template": "",
            },
            files={
                "attachments": FileStorage(io.BytesIO(b"col1,col2\n"), filename="report.csv", content_type="text/csv")
            },
        )
        page = await r.get_data(as_text=True)
        assert r.status_code == 200 and "Message queued" in page
        msg_id = re.search(r'<code id="message-id">([0-9a-f]+)</code>', page)
        assert msg_id and f'href="/api/messages/{msg_id.group(1)}"' in page
        [got] = await svc.delivered(1)
        assert sorted(got.rcpt_tos) == ["ann@example.com", "bob@example.com"]
        assert got.message["To"] == '"Doe, Ann" <ann@example.com>, bob@example.com'
        [att] = list(got.message.iter_attachments())
        assert att.get_filename() == "report.csv" and att.get_content_type() == "text/csv"
        # The signed-in session may read the status the page links to.
        status = await svc.client.get(f"/api/messages/{msg_id.group(1)}")
        assert status.status_code == 200


async def test_form_template_choice(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with running(smtp_port, handler, tmp_path) as svc:
        fields = await _signed_in_form(svc)
        page = await (await svc.client.get("/")).get_data(as_text=True)
        assert '<option value="thank_you"' in page and '<option value="welcome"' in page
        r = await svc.client.post(
            "/",
            form={
                **fields,
                "email": "Ann <ann@example.com>",
                "subject": "Hours",
                "message": "<script>x</script>",
                "template": "thank_you",
            },
        )
        assert r.status_code == 200
        [got] = await svc.delivered(1)
        assert got.message["Subject"] == "Thank you for your message, Ann"
        assert "&lt;script&gt;" in got.message.get_body(("html",)).get_content()
        # A template whose variables the form cannot supply: an error next to the template field.
        r = await svc.client.post(
            "/",
            form={
                **fields,
                "nonce": "n2",
                "email": "ann@example.com",
                "subject": "x",
                "message": "y",
                "template": "welcome",
            },
        )
        page = await r.get_data(as_text=True)
        assert r.status_code == 422 and 'id="template-error"' in page and "url" in page


@pytest.mark.parametrize(
    ("form", "field", "status"),
    [
        ({"email": "not an address", "subject": "s", "message": "m"}, "email", 422),
        ({"email": "", "subject": "s", "message": "m"}, "email", 422),
        ({"email": "a@example.com", "subject": "s\r\nBcc: x@evil.example", "message": "m"}, "subject", 422),
        ({"email": "a@example.com", "subject": "s", "message": "m", "template": "nope"}, "template", 422),
    ],
)
async def test_form_errors_keep_values(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, form: dict[str, str], field: str, status: int
) -> None:
    async with running(smtp_port, handler, tmp_path, workers=0) as svc:
        fields = await _signed_in_form(svc)
        r = await svc.client.post("/", form={**fields, **form})
        page = await r.get_data(as_text=True)
        assert r.status_code == status
        assert f'id="{field}-error"' in page and 'aria-invalid="true"' in page
        assert f'value="{form["email"]}"' in page and f">{form['message']}</textarea>" in page
        assert await svc.pending() == 0


async def test_form_attachment_too_large(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with running(smtp_port, handler, tmp_path, workers=0, max_attachment_bytes=5) as svc:
        fields = await _signed_in_form(svc)
        r = await svc.client.post(
            "/",
            form={**fields, "email": "a@example.com", "subject": "s", "message": "m"},
            files={"attachments": FileStorage(io.BytesIO(b"123456"), filename="a.bin")},
        )
        assert r.status_code == 413 and 'id="attachments-error"' in await r.get_data(as_text=True)
        assert await svc.pending() == 0


async def test_csrf_and_origin(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with running(smtp_port, handler, tmp_path, workers=0) as svc:
        fields = await _signed_in_form(svc)
        ok = {"email": "a@example.com", "subject": "s", "message": "m"}
        r = await svc.client.post("/", form={**ok, "nonce": "1"})
        assert r.status_code == 403
        r = await svc.client.post("/", form={**ok, "nonce": "2", "csrf_token": "forged"})
        assert r.status_code == 403
        for origin in ("https://evil.example", "http://localhost.evil.example", "null"):
            r = await svc.client.post("/", form={**fields, **ok}, headers={"Origin": origin})
            assert r.status_code == 403, origin
        assert await svc.pending() == 0
        r = await svc.client.post("/", form={**fields, **ok}, headers={"Origin": "https://localhost"})
        assert r.status_code == 200  # same host behind a TLS-terminating proxy
        # The same page submitted twice (double click): one message.
        r = await svc.client.post("/", form={**fields, **ok})
        assert r.status_code == 200
        assert await svc.pending() == 1


async def test_sign_in_required_once_keys_exist(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with running(smtp_port, handler, tmp_path, workers=0) as svc:
        r = await svc.client.get("/")
        assert r.status_code == 302 and r.headers["Location"].startswith("/signin")
        r = await svc.client.post("/", form={"email": "a@example.com", "subject": "s", "message": "m"})
        assert r.status_code == 302
        page = await (await svc.client.get("/signin?next=//evil.example")).get_data(as_text=True)
        assert 'name="next" value="/"' in page  # no open redirect
        token = hidden(page, "csrf_token")
        r = await svc.client.post("/signin", form={"csrf_token": token, "key": "wrong", "next": "/"})
        assert r.status_code == 401 and "not valid" in await r.get_data(as_text=True)
        r = await svc.client.post("/signin", form={"key": KEY, "next": "/"})
        assert r.status_code == 403
        assert svc.client.cookie_jar is not None
        cookie = next(c for c in svc.client.cookie_jar)
        assert cookie.name == "mailsvc_session" and cookie.has_nonstandard_attr("HttpOnly")
        assert await svc.pending() == 0
        fields = await _signed_in_form(svc)
        await svc.client.post("/signout", form={"csrf_token": fields["csrf_token"]})
        assert (await svc.client.get("/")).status_code == 302


async def test_secure_cookie_flag_outside_dev_mode(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with running(smtp_port, handler, tmp_path, workers=0, secure_cookies=None) as svc:
        r = await svc.client.get("/signin")
        set_cookie = r.headers["Set-Cookie"]
        assert "Secure" in set_cookie and "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie


async def test_open_dev_service_needs_no_sign_in(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with running(
        smtp_port, handler, tmp_path, dev_mode=True, api_keys=(), workers=0, service={"dev_smtp_port": 0}
    ) as svc:
        page = await (await svc.client.get("/")).get_data(as_text=True)
        assert "anyone who can reach it" in page
        form: dict[str, Any] = {
            "csrf_token": hidden(page, "csrf_token"),
            "nonce": hidden(page, "nonce"),
            "email": "a@example.com",
            "subject": "s",
            "message": "m",
        }
        r = await svc.client.post("/", form=MultiDict(form))
        assert r.status_code == 200
        r = await svc.client.post("/api/messages", json={"to": "b@example.com", "subject": "s", "text": "t"})
        assert r.status_code == 202
        assert await svc.pending() == 2
