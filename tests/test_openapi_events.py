"""The events and webhook deliveries routes accept exactly what /openapi.json says, value by value.

Why besides the schemathesis contract: its generation is seeded and bounded, and may never draw the edge
values (an empty ``status``, a 19-digit ``after``, ``type=delivered,``); here each is checked against the
document's own schema (jsonschema_rs) and sent to the real app, and the two must agree: 200 exactly when
the document allows it, else 422 naming the parameter.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from mailsvc.web.openapi import openapi_document
from tests.servers import RecordingHandler
from tests.webkit import running

ADMIN = "ops-key"
CASES: list[tuple[str, str, str]] = (
    [
        ("/api/events", "type", v)
        for v in (
            "delivered",
            "delivered,bounced",
            "",
            "delivered,",
            ",delivered",
            "sent",
            "DELIVERED",
            "delivered bounced",
        )
    ]
    + [("/api/events", "message", v) for v in ("abc", "", "a" * 64, "a" * 65, "a/b", "a.b", "é")]
    + [
        ("/api/events", "since", v)
        for v in ("", "s1", "s" + "9" * 18, "s" + "9" * 19, "s", "s-1", "s١", "S1", "s1 ", "s01")
    ]
    + [
        ("/api/events", "limit", v)
        for v in ("1", "500", "0", "501", "-1", "1.0", "", "١", "00001", "0" * 30 + "1", "9" * 5000, "+5")
    ]
    + [("/api/webhooks/deliveries", "status", v) for v in ("failed", "pending", "", "FAILED", "nope")]
    + [
        ("/api/webhooks/deliveries", "after", v)
        for v in ("0", "9" * 18, "9" * 19, "0" * 30 + "7", "-1", "", "1.5", "١", "+1")
    ]
    + [("/api/webhooks/deliveries", "limit", v) for v in ("1", "500", "501", "0")]
)


def _param_schema(path: str, name: str) -> dict[str, Any]:
    [param] = [p for p in openapi_document()["paths"][path]["get"]["parameters"] if p["name"] == name]
    return dict(param["schema"])


def _as_json_value(schema: dict[str, Any], raw: str) -> Any:
    """The query string's text as the document's type reads it (an integer only if it is one's spelling)."""
    if schema.get("type") == "integer":
        return int(raw) if re.fullmatch(r"-?[0-9]{1,40}", raw) else raw
    if schema.get("type") == "array":
        return [raw]
    return raw


@pytest.mark.parametrize(("path", "name", "raw"), CASES)
async def test_route_accepts_exactly_what_the_document_allows(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, path: str, name: str, raw: str
) -> None:
    schema = _param_schema(path, name)
    allowed = jsonschema_rs.validator_for(schema).is_valid(_as_json_value(schema, raw))
    keys = tmp_path / "tenants.json"
    keys.write_text(json.dumps({"ops": {"keys": [{"key": ADMIN, "scopes": ["admin"]}]}}))
    async with running(smtp_port, handler, tmp_path, api_keys_file=keys, api_keys=()) as svc:
        r = await svc.client.get(path, query_string={name: raw}, headers={"Authorization": f"Bearer {ADMIN}"})
        body = await r.get_json()
    if allowed:
        assert r.status_code == 200, (raw, body)
    else:
        assert r.status_code == 422, (raw, r.status_code, body)
        assert body["errors"][0]["field"] == name
