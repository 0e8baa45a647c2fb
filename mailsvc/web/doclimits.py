"""The request models' JSON Schemas narrowed to one deployment: its limits, its templates, its rules.

Why: the pydantic models (:mod:`.schemas`) state what holds everywhere; what a
request may send *here* also depends on :class:`~mailsvc.config.WebConfig` (how
many recipients, how large an attachment, whether ``sender`` may be set) and on
the templates in this deployment's folder (which names exist, which ``context``
keys each reads). Validation reads the same settings through
:class:`~.schemas.CheckContext`; this module writes them into the document, so a
client generated from ``/openapi.json`` sends nothing the service refuses for a
reason the schema could state.

    >>> attachment_chars(10), attachment_chars(12)  # 10 bytes: 16 characters, the last group "xx=="
    (16, 16)
"""

from __future__ import annotations

import copy
from typing import Any

from ..addresses import HEADER_LINE_PATTERN
from .schemas import CheckContext

__all__ = ["attachment_chars", "narrow"]

_ADDRESS_FIELDS = ("to", "cc", "bcc")
_INLINE_FIELDS = ("subject", "text", "html")
# A value a subject template prints: anything but a string that breaks the header line.
_SUBJECT_VALUE = {
    "anyOf": [
        {"type": ["number", "boolean", "null", "array", "object"]},
        {"type": "string", "pattern": HEADER_LINE_PATTERN},
    ],
    "description": "printed in the subject: a string must be one line",
}


def attachment_chars(max_bytes: int) -> int:
    """The longest padded base64 text of an attachment no larger than ``max_bytes``."""
    return 4 * -(-max_bytes // 3)


def narrow(schemas: dict[str, Any], ctx: CheckContext) -> dict[str, Any]:
    """A copy of ``schemas`` (``components.schemas``) with ``ctx``'s limits, templates and rules written in."""
    out = copy.deepcopy(schemas)
    web = ctx.web
    if "AttachmentIn" in out:
        content = out["AttachmentIn"]["properties"]["content"]
        content["maxLength"] = longest = attachment_chars(web.max_attachment_bytes)
        spare = web.max_attachment_bytes % 3
        if spare:  # at the longest, the last group must be padded down to the bytes that remain
            content["anyOf"] = [{"maxLength": longest - 4}, {"pattern": "==$" if spare == 1 else "=$"}]
        content["description"] += f"; at most {web.max_attachment_bytes} bytes once decoded (else 413)"
    if "MessageIn" in out:
        props = out["MessageIn"]["properties"]
        for name in _ADDRESS_FIELDS:
            # ``to`` has at least one address, so cc and bcc each have at most one fewer than the total allows.
            most = web.max_recipients if name == "to" else web.max_recipients - 1
            _cap_addresses(props[name], most, web.allowed_domains)
            props[name]["description"] += f"; to, cc and bcc together at most {web.max_recipients} addresses"
    if "BulkRecipient" in out:
        _cap_addresses(out["BulkRecipient"]["properties"]["to"], None, web.allowed_domains)
    if "BulkIn" in out:
        props = out["BulkIn"]["properties"]
        props["recipients"]["maxItems"] = web.max_batch
        for name in _INLINE_FIELDS:
            _cap_inline(props[name], web.max_template_chars)
    for model in ("MessageIn", "BulkIn"):
        if model in out:
            schema = out[model]
            if not web.allow_sender:
                schema["properties"]["sender"] = {
                    "type": "null",
                    "default": None,
                    "description": "this deployment sets From itself: leave sender out",
                }
            _templates(schema, ctx, per_recipient=model == "BulkIn")
            if web.public_url is None:
                schema["properties"]["unsubscribe"] = {
                    "enum": [False] if model == "MessageIn" else [False, None],
                    "default": False if model == "MessageIn" else None,
                    "description": "this deployment has no MAILSVC_PUBLIC_URL, so it makes no unsubscribe links",
                }
    return out


def _array_branch(schema: dict[str, Any]) -> dict[str, Any] | None:
    branches: list[dict[str, Any]] = schema.get("anyOf", [schema])
    return next((b for b in branches if b.get("type") == "array"), None)


def _cap_addresses(schema: dict[str, Any], most: int | None, domains: tuple[str, ...]) -> None:
    array = _array_branch(schema)
    if array is not None and most is not None:
        array["maxItems"] = min(most, array.get("maxItems", most))
    if domains:
        schema["description"] = (
            schema.get("description", "") + "; only addresses at " + ", ".join(domains) + " or their subdomains"
        )


def _cap_inline(schema: dict[str, Any], max_chars: int) -> None:
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "string":
            branch["maxLength"] = min(max_chars, branch.get("maxLength", max_chars))


def _templates(schema: dict[str, Any], ctx: CheckContext, *, per_recipient: bool) -> None:
    """``template`` as this deployment's names, one ``oneOf`` branch each saying which ``context`` keys it reads."""
    names = ctx.renderer.names() if ctx.renderer is not None else []
    template = schema["properties"]["template"]
    rule: list[dict[str, Any]] = schema["oneOf"]
    named, literal = rule[0], rule[1:]
    if not names:
        template.clear()
        template.update({"type": "null", "default": None, "description": "this deployment has no email templates"})
        schema["oneOf"] = literal
        return
    for branch in template.get("anyOf", []):
        if branch.get("type") == "string":
            branch["enum"] = names
    branches = []
    for name in names:
        assert ctx.renderer is not None
        every, subject = ctx.renderer.variables(name)
        context: dict[str, Any] = {
            "type": "object",
            "required": sorted(every),
            "properties": {v: _SUBJECT_VALUE for v in sorted(subject)},
        }
        branch = copy.deepcopy(named)
        branch["properties"]["template"] = {"const": name}
        if every and per_recipient:
            branch["properties"]["recipients"] = {
                "type": "array",
                "items": {"type": "object", "required": ["context"], "properties": {"context": context}},
            }
        elif every:
            branch["required"] = [*branch["required"], "context"]
            branch["properties"]["context"] = context
        branches.append(branch)
    schema["oneOf"] = branches + literal
