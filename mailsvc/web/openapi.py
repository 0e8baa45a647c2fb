"""``/openapi.json`` from the same pydantic models that validate requests, and ``/docs`` rendering it.

Why built by hand from ``model_json_schema``: the document cannot disagree with
validation, and the docs page is rendered on the server from that document, so
it needs no external script or stylesheet.
"""

from __future__ import annotations

import re
from typing import Any

from markupsafe import Markup, escape
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from quart import Blueprint, Response, render_template

from ..labels import SEND_AT_PATTERN, TAG_PATTERN
from ..outbox.listing import MAX_PAGE
from ..outbox.states import MessageState
from ..outbox.suppressions import Reason
from .api import ID_PATTERN, IDEMPOTENCY_KEY_PATTERN, TO_PATTERN
from .doclimits import narrow
from .events_api import AFTER_MAX, DELIVERY_STATES, SINCE_PATTERN, TYPE_PATTERN
from .events_api import MAX_PAGE as EVENTS_MAX_PAGE
from .problems import PROBLEM_JSON, Problem
from .schemas import (
    MAILBOX_FORMAT,
    Accepted,
    BatchAccepted,
    BatchStatusOut,
    BulkIn,
    CheckContext,
    DeliveryPageOut,
    EventPageOut,
    MessageIn,
    MessagePageOut,
    MessageStatusOut,
    ReplayOut,
)
from .state import web_state
from .suppression_schemas import (
    CURSOR_PATTERN,
    LIST_PATTERN,
    SuppressionPage,
    SuppressionsAdded,
    SuppressionsIn,
)
from .suppression_schemas import MAX_PAGE as SUPPRESSIONS_MAX_PAGE

__all__ = ["bp", "openapi_document"]

bp = Blueprint("mailsvc_openapi", __name__)

_MODELS: list[type[BaseModel]] = [
    MessageIn,
    BulkIn,
    Accepted,
    BatchAccepted,
    MessageStatusOut,
    BatchStatusOut,
    MessagePageOut,
    SuppressionsIn,
    SuppressionsAdded,
    SuppressionPage,
    EventPageOut,
    DeliveryPageOut,
    ReplayOut,
    Problem,
]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _problem(description: str, retry: bool = False, auth: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": _ref(Problem)}},
    }
    if retry:
        out["headers"] = {
            "Retry-After": {"schema": {"type": "integer", "minimum": 1}, "description": "seconds", "required": True}
        }
    if auth:
        out["headers"] = {
            "WWW-Authenticate": {"schema": {"type": "string"}, "description": "RFC 6750 Bearer challenge"}
        }
    return out


_ERRORS = {
    "401": _problem("missing or invalid API key", auth=True),
    "403": _problem("the key may not do this"),
    "429": _problem("rate limit for this key exceeded", retry=True),
    "503": _problem("the outbox is full, not open yet or unavailable", retry=True),
}
_POST_ERRORS = {
    "400": _problem("malformed JSON"),
    "413": _problem("the request, or an attachment once decoded, is larger than this deployment's limit"),
    "415": _problem("body is not application/json"),
    "422": _problem("invalid fields (each listed in errors, by field); nothing queued"),
    **_ERRORS,
}
_IDEM = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
    "description": "retries with the same key (within 24 h) return the first answer and queue nothing",
}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": ID_PATTERN}}
# /api/messages/bulk is the bulk route's own (api.MessageIdConverter): no message id is "bulk".
_MESSAGE_ID = {**_ID, "schema": {"type": "string", "pattern": ID_PATTERN, "not": {"const": "bulk"}}}


_MAILBOX = {"type": "string", "format": MAILBOX_FORMAT, "minLength": 1, "maxLength": 998}
_LIST_STREAM = {"type": "string", "pattern": LIST_PATTERN}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_TIME = {"type": "string", "format": "date-time", "pattern": SEND_AT_PATTERN}
_STATUS = _query("status", {"type": "string", "enum": sorted(MessageState)}, "only messages in this state")
_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "page size (default 50)")
_CURSOR = _query(
    "cursor", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,200}$"}, "a page's 'next', unchanged (opaque)"
)
_LIST_PARAMS = [
    _STATUS,
    _query("tag", {"type": "string", "pattern": TAG_PATTERN}, "only messages with this tag"),
    _query("since", _TIME, "created at or after (RFC 3339 with an offset)"),
    _query("until", _TIME, "created before (RFC 3339 with an offset)"),
    _query("to", {"type": "string", "pattern": TO_PATTERN}, "only messages with this recipient address, exactly"),
    _LIMIT,
    _CURSOR,
]
_EVENTS_LIMIT = _query(
    "limit", {"type": "integer", "minimum": 1, "maximum": EVENTS_MAX_PAGE}, "page size (default 100)"
)
_EVENTS_PARAMS = [
    {
        "name": "type",
        "in": "query",
        "required": False,
        "style": "form",
        "explode": True,
        "schema": {"type": "array", "items": {"type": "string", "pattern": TYPE_PATTERN}},
        "description": "only these event types (repeat the parameter, or separate types with commas)",
    },
    _query("message", {"type": "string", "pattern": ID_PATTERN}, "only this message's events"),
    _query("tag", {"type": "string", "pattern": TAG_PATTERN}, "only events of messages with this tag"),
    _query("since", {"type": "string", "pattern": SINCE_PATTERN}, "a page's 'next', unchanged (opaque)"),
    _EVENTS_LIMIT,
]
_DELIVERIES_PARAMS = [
    _query("status", {"type": "string", "enum": list(DELIVERY_STATES)}, "only deliveries in this state"),
    _query("after", {"type": "integer", "minimum": 0, "maximum": AFTER_MAX}, "a page's 'next' (default 0)"),
    _EVENTS_LIMIT,
]
_DELIVERY_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0, "maximum": 2**62 - 1},
}
_LIST_ERRORS = {"422": _problem("a bad query parameter (named in errors)"), **_ERRORS}
_CANCEL_DOC = (
    "Cancel what no relay has been handed yet: queued, scheduled and deferred recipients end 'cancelled'; "
    "those being sent finish (202 until they have), delivered and failed ones stay. Idempotent."
)


def _suppression_paths() -> dict[str, Any]:
    """``/api/suppressions`` (:mod:`.suppressions`): the query parameters are :class:`SuppressionQuery`'s."""
    reasons = {"type": "string", "enum": [r.value for r in Reason]}
    return {
        "/api/suppressions": {
            "get": {
                "summary": "A page of this tenant's suppression list, in (stream, address) order",
                "operationId": "listSuppressions",
                "parameters": [
                    _query("reason", reasons, "only entries with this reason"),
                    _query("stream", _LIST_STREAM, "only entries on this stream ('*': those for every stream)"),
                    _query("address", _MAILBOX, "only this address's entries"),
                    _query(
                        "limit", {"type": "integer", "minimum": 1, "maximum": SUPPRESSIONS_MAX_PAGE}, "page size (100)"
                    ),
                    _query("cursor", {"type": "string", "pattern": CURSOR_PATTERN}, "the previous page's next"),
                ],
                "responses": {
                    "200": _json(SuppressionPage, "a page"),
                    "422": _problem("invalid query parameters (each listed in errors)"),
                    **_ERRORS,
                },
            },
            "post": {
                "summary": "Put addresses on this tenant's suppression list (mail to them is not sent)",
                "operationId": "addSuppressions",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(SuppressionsIn)}}},
                "responses": {"200": _json(SuppressionsAdded, "on the list"), **_POST_ERRORS},
            },
        },
        "/api/suppressions/{address}": {
            "delete": {
                "summary": "Take an address off this tenant's list (every stream, or the one named)",
                "operationId": "removeSuppression",
                "parameters": [
                    {"name": "address", "in": "path", "required": True, "schema": _MAILBOX},
                    _query("stream", _LIST_STREAM, "remove only the entry on this stream ('*': the every-stream one)"),
                ],
                "responses": {
                    "204": {"description": "removed"},
                    "404": _problem("the address is not on the list (there)"),
                    "422": _problem("not an address, or an invalid stream"),
                    **_ERRORS,
                },
            }
        },
    }


def _not_allowed(description: str) -> dict[str, Any]:
    out = _problem(description)
    out["headers"] = {"Allow": {"schema": {"type": "string"}, "description": "the methods it takes", "required": True}}
    return out


def _json(
    model: type[BaseModel], description: str, location: bool = False, links: dict[str, Any] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ref(model)}}}
    if location:
        out["headers"] = {"Location": {"schema": {"type": "string"}, "description": "status URL", "required": True}}
    if links:
        out["links"] = links
    return out


def openapi_document(ctx: CheckContext | None = None) -> dict[str, Any]:
    """The document; with ``ctx``, narrowed to that deployment's limits and templates (:mod:`.doclimits`)."""
    _, defs = models_json_schema([(m, "validation") for m in _MODELS], ref_template="#/components/schemas/{model}")
    schemas = defs.get("$defs", {})
    if ctx is not None:
        schemas = narrow(schemas, ctx)
    return {
        "openapi": "3.1.0",
        "info": {"title": "mailsvc", "version": "1", "description": "Queue email for durable delivery."},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a key from MAILSVC_API_KEYS"}
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/messages": {
                "get": {
                    "summary": "The caller's messages, newest first, filtered; follow 'next' to page on",
                    "operationId": "listMessages",
                    "parameters": _LIST_PARAMS,
                    "responses": {"200": _json(MessagePageOut, "a page"), **_LIST_ERRORS},
                },
                "post": {
                    "summary": "Queue one message",
                    "operationId": "sendMessage",
                    "parameters": [_IDEM],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(MessageIn)}}},
                    "responses": {
                        "202": _json(Accepted, "queued", location=True, links=_link("messageStatus", "id")),
                        **_POST_ERRORS,
                    },
                },
            },
            "/api/messages/bulk": {
                "post": {
                    "summary": "Queue one personalised message per recipient entry, all or none",
                    "operationId": "sendBulk",
                    "parameters": [_IDEM],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(BulkIn)}}},
                    "responses": {
                        "202": _json(
                            BatchAccepted, "batch queued", location=True, links=_link("batchStatus", "batch_id")
                        ),
                        **_POST_ERRORS,
                    },
                }
            },
            "/api/messages/{id}": {
                "get": {
                    "summary": "A message's state and each recipient's state, attempts and last reply",
                    "operationId": "messageStatus",
                    "parameters": [_MESSAGE_ID],
                    "responses": {
                        "200": _json(MessageStatusOut, "status"),
                        "404": _problem("unknown id"),
                        "405": _not_allowed("id 'bulk' is the bulk route's path, which only takes POST"),
                        **_ERRORS,
                    },
                },
                "delete": {
                    "summary": "Cancel a message",
                    "description": _CANCEL_DOC,
                    "operationId": "cancelMessage",
                    "parameters": [_MESSAGE_ID],
                    "responses": {
                        "200": _json(MessageStatusOut, "nothing of it is being sent: its status now"),
                        "202": _json(MessageStatusOut, "part of it is being sent and will finish: its status now"),
                        "404": _problem("unknown id"),
                        "405": _not_allowed("id 'bulk' is the bulk route's path, which only takes POST"),
                        **_ERRORS,
                    },
                },
            },
            "/api/batches/{id}": {
                "get": {
                    "summary": "Counts of a batch's messages per state",
                    "operationId": "batchStatus",
                    "parameters": [_ID],
                    "responses": {"200": _json(BatchStatusOut, "counts"), "404": _problem("unknown id"), **_ERRORS},
                },
                "delete": {
                    "summary": "Cancel every message of a batch, in one transaction",
                    "description": _CANCEL_DOC,
                    "operationId": "cancelBatch",
                    "parameters": [_ID],
                    "responses": {
                        "200": _json(BatchStatusOut, "nothing of it is being sent: its counts now"),
                        "202": _json(BatchStatusOut, "some of it is being sent and will finish: its counts now"),
                        "404": _problem("unknown id"),
                        **_ERRORS,
                    },
                },
            },
            "/api/events": {
                "get": {
                    "summary": "Delivery events of the caller's mail, oldest first, after 'since'",
                    "description": "Pass a page's 'next' as 'since' to get exactly what happened after it, nothing "
                    "twice (an admin key reads every tenant's). An empty page keeps 'next' as it was.",
                    "operationId": "listEvents",
                    "parameters": _EVENTS_PARAMS,
                    "responses": {"200": _json(EventPageOut, "a page of events"), **_LIST_ERRORS},
                }
            },
            "/api/webhooks/deliveries": {
                "get": {
                    "summary": "Webhook deliveries by id (admin key); 'next' is the 'after' of the next page",
                    "operationId": "listWebhookDeliveries",
                    "parameters": _DELIVERIES_PARAMS,
                    "responses": {"200": _json(DeliveryPageOut, "a page of deliveries"), **_LIST_ERRORS},
                }
            },
            "/api/webhooks/deliveries/{id}/replay": {
                "post": {
                    "summary": "Send a failed or failing (or delivered) webhook delivery again, now (admin key)",
                    "operationId": "replayWebhookDelivery",
                    "parameters": [_DELIVERY_ID],
                    "responses": {
                        "202": _json(ReplayOut, "due now"),
                        "404": _problem("no such delivery"),
                        **_ERRORS,
                    },
                }
            },
            "/api/batches/{id}/messages": {
                "get": {
                    "summary": "A batch's messages, newest first (status=failed for the failures)",
                    "operationId": "batchMessages",
                    "parameters": [_ID, _STATUS, _LIMIT, _CURSOR],
                    "responses": {
                        "200": _json(MessagePageOut, "a page"),
                        "404": _problem("unknown id"),
                        **_LIST_ERRORS,
                    },
                }
            },
            **_suppression_paths(),
        },
    }


def _link(operation: str, field: str) -> dict[str, Any]:
    return {operation: {"operationId": operation, "parameters": {"id": f"$response.body#/{field}"}}}


@bp.get("/openapi.json")
async def openapi_json() -> dict[str, Any]:
    return openapi_document(web_state().check_context())


def _type_of(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_type_of(s) for s in schema["anyOf"])
    t = schema.get("type", "any")
    if t == "array":
        return f"list of {_type_of(schema.get('items', {}))}"
    if t == "object" and "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
        return f"object of {_type_of(schema['additionalProperties'])}"
    return str(t)


_LITERAL = re.compile(r"``(.+?)``")


def _prose(text: str) -> Markup:
    """Docstring text for the page: escaped, with reST ``literals`` shown as code rather than backticks."""
    return Markup(_LITERAL.sub(r"<code>\1</code>", str(escape(text))))


@bp.get("/docs")
async def docs() -> Response:
    ws = web_state()
    doc = openapi_document(ws.check_context())
    schemas = []
    for name, schema in doc["components"]["schemas"].items():
        required = set(schema.get("required", []))
        props = [
            {"name": p, "type": _type_of(s), "required": p in required, "description": _prose(s.get("description", ""))}
            for p, s in schema.get("properties", {}).items()
        ]
        schemas.append(
            {"name": name, "description": _prose((schema.get("description") or "").split("\n\n")[0]), "props": props}
        )
    operations = [
        {
            "path": path,
            "method": method.upper(),
            "op": op,
            "body": _type_of(op["requestBody"]["content"]["application/json"]["schema"])
            if "requestBody" in op
            else None,
        }
        for path, item in doc["paths"].items()
        for method, op in item.items()
    ]
    html = await render_template("docs.html", operations=operations, schemas=schemas, open_service=ws.keys.open)
    return Response(html, content_type="text/html; charset=utf-8")
