"""Issue 14, friction 8 (part): inline (CID) images through the API, placed in multipart/related."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests.servers import RecordingHandler
from tests.webkit import AUTH, running

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
LOGO = {
    "filename": "logo.png",
    "content_type": "image/png",
    "content": base64.b64encode(PNG).decode(),
    "content_id": "logo@shop.example",
}
HTML = '<p>Hi</p><img alt="logo" src="cid:logo@shop.example">'


def _related_image(message: Any) -> Any:
    assert message.get_content_type() == "multipart/alternative" or message.is_multipart()
    related = [p for p in message.walk() if p.get_content_type() == "multipart/related"]
    assert related, [p.get_content_type() for p in message.walk()]
    [image] = [p for p in related[0].iter_parts() if p.get_content_type() == "image/png"]
    return image


@pytest.mark.parametrize("route", ["single", "bulk"])
async def test_an_attachment_with_a_content_id_is_an_inline_image(
    route: str, smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    body: dict[str, Any] = {"subject": "s", "html": HTML, "attachments": [LOGO]}
    if route == "single":
        path, body = "/api/messages", {**body, "to": "ann@example.com"}
    else:
        path, body = "/api/messages/bulk", {**body, "recipients": [{"to": "ann@example.com"}]}
    async with running(smtp_port, handler, tmp_path) as svc:
        r = await svc.client.post(path, json=body, headers=AUTH)
        assert r.status_code == 202, await r.get_data(as_text=True)
        [got] = await svc.delivered(1)
    image = _related_image(got.message)
    assert image["Content-ID"] == "<logo@shop.example>"
    assert image.get_content_disposition() == "inline"
    assert image.get_content() == PNG


@pytest.mark.parametrize(
    "attachment, reason",
    [
        ({**LOGO, "content_id": "<logo>"}, "content_id"),
        ({**LOGO, "content_id": "a b"}, "content_id"),
        ({**LOGO, "disposition": "sideways"}, "disposition"),
    ],
)
async def test_bad_inline_fields_are_422_naming_the_field(
    attachment: dict[str, Any], reason: str, smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    async with running(smtp_port, handler, tmp_path, workers=0) as svc:
        r = await svc.client.post(
            "/api/messages",
            json={"to": "a@example.com", "subject": "s", "html": HTML, "attachments": [attachment]},
            headers=AUTH,
        )
        problem = await r.get_json()
        assert r.status_code == 422, problem
        assert any(e["field"].startswith("attachments[0]") for e in problem["errors"]), problem
        assert any(reason in (e["field"] + e["reason"]) for e in problem["errors"]), problem
        assert await svc.pending() == 0
