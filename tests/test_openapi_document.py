"""The OpenAPI document states what validation accepts: each rule written twice is checked to agree here."""

from __future__ import annotations

import base64
import itertools
from typing import Any

import jsonschema_rs
import pytest
from pydantic import ValidationError

from mailsvc.config import WebConfig
from mailsvc.rendering import TemplateRenderer
from mailsvc.templatepaths import email_folders
from mailsvc.web.openapi import openapi_document
from mailsvc.web.schemas import CONTENT_RULE, AttachmentIn, CheckContext, MessageIn
from tests.webkit import TEMPLATES

ABSENT = object()


@pytest.mark.parametrize("shape", list(itertools.product([ABSENT, None, "x"], repeat=4)))
def test_the_content_rule_in_the_document_is_the_validators(shape: tuple[Any, ...]) -> None:
    body: dict[str, Any] = {"to": "ann@example.com"}
    body.update({k: v for k, v in zip(("template", "subject", "text", "html"), shape, strict=True) if v is not ABSENT})
    try:
        MessageIn.model_validate(body)
        valid = True
    except ValidationError:
        valid = False
    assert jsonschema_rs.validator_for(CONTENT_RULE).is_valid(body) == valid


def _schemas(**web: Any) -> dict[str, Any]:
    ctx = CheckContext(WebConfig(**web), TemplateRenderer(email_folders(TEMPLATES)))  # the project's, then packaged
    schemas: dict[str, Any] = openapi_document(ctx)["components"]["schemas"]
    return schemas


@pytest.mark.parametrize("limit", [3000, 3001, 3002])
def test_attachment_size_bound_is_exact(limit: int) -> None:
    schema = _schemas(max_attachment_bytes=limit)["AttachmentIn"]
    ctx = CheckContext(WebConfig(max_attachment_bytes=limit))
    check = jsonschema_rs.validator_for(schema)
    for size in range(limit - 4, limit + 4):
        body = {"filename": "a.bin", "content": base64.b64encode(b"x" * size).decode()}
        try:
            AttachmentIn.model_validate(body, context=ctx)
            accepted = True
        except ValidationError:
            accepted = False
        assert check.is_valid(body) == accepted == (size <= limit), size


def test_deployment_narrowing() -> None:
    schemas = _schemas(max_batch=7, allow_sender=False)
    assert schemas["BulkIn"]["properties"]["recipients"]["maxItems"] == 7
    assert schemas["MessageIn"]["properties"]["sender"]["type"] == "null"
    names = [b["properties"]["template"].get("const") for b in schemas["MessageIn"]["oneOf"]]
    assert names[:2] == ["thank_you", "welcome"]
    welcome = schemas["MessageIn"]["oneOf"][1]["properties"]["context"]
    assert welcome["required"] == ["name", "url"] and set(welcome["properties"]) == {"name"}
    assert "enum" not in str(_schemas(allow_sender=True)["MessageIn"]["properties"]["sender"])
