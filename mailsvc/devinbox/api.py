"""JSON view of the dev inbox, for the test suites of apps that send through us (like Mailpit's API).

GET    /api/inbox?q=ann&start=0&limit=50   newest first: {"total", "start", "count", "messages": [...]}
GET    /api/inbox/<id>                     one message with headers, text, html, attachments
DELETE /api/inbox/<id>                     204
DELETE /api/inbox                          {"deleted": n}
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, jsonify, request, url_for

from ..pagesafety import same_origin
from ..services import services
from .mailview import parse
from .store import InboxStore, Summary

__all__ = ["bp", "summary_json"]

bp = Blueprint("devinbox_api", __name__)
MAX_LIMIT = 500


def store() -> InboxStore:
    return services().inbox_store()


def problem(status: int, title: str, detail: str, errors: list[dict[str, str]] | None = None) -> Response:
    """An RFC 9457 problem document (kept local so the inbox does not depend on the web layer)."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = status
    response.content_type = "application/problem+json"
    return response


def summary_json(s: Summary) -> dict[str, Any]:
    return {
        "id": s.id,
        "message_id": s.message_id,
        "created": s.received_at.isoformat(),
        "from": s.sender,
        "to": s.recipients,
        "subject": s.subject,
        "size": s.size,
        "attachment_count": s.attachments,
        "url": url_for("devinbox_api.message", id=s.id),
    }


def _int_arg(name: str, default: int, low: int, high: int) -> int | dict[str, str]:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return {"field": name, "reason": f"must be a whole number, got {raw!r}"}
    if not low <= value <= high:
        return {"field": name, "reason": f"must be between {low} and {high}, got {value}"}
    return value


@bp.get("/api/inbox")
async def messages() -> Response:
    start = _int_arg("start", 0, 0, 10**9)
    limit = _int_arg("limit", 50, 1, MAX_LIMIT)
    bad = [e for e in (start, limit) if isinstance(e, dict)]
    if bad or not isinstance(start, int) or not isinstance(limit, int):
        return problem(400, "Bad query", "query parameters are invalid", bad)
    q = request.args.get("q", "").strip()
    total, rows = await store().search(q, offset=start, limit=limit)
    return jsonify({"total": total, "start": start, "count": len(rows), "messages": [summary_json(r) for r in rows]})


@bp.get("/api/inbox/<int:id>")
async def message(id: int) -> Response:
    found = await store().get(id)
    if found is None:
        return problem(404, "Not found", f"no captured message with id {id}")
    view = parse(found.raw)
    headers: dict[str, list[str]] = {}
    for name, value in view.headers:
        headers.setdefault(name, []).append(value)
    body = summary_json(found.summary) | {
        "headers": headers,
        "text": view.text,
        "html": view.html,
        "attachments": [
            {
                "part": p.index,
                "filename": p.filename,
                "content_type": p.content_type,
                "size": p.size,
                "content_id": p.content_id,
                "inline": p.inline,
                "url": url_for("devinbox.part", id=id, index=p.index),
            }
            for p in view.parts
        ],
        "raw_url": url_for("devinbox.eml", id=id),
    }
    return jsonify(body)


@bp.delete("/api/inbox/<int:id>")
async def delete(id: int) -> Response:
    if not same_origin(request):
        return problem(403, "Forbidden", "cross-site request refused")
    if not await store().delete(id):
        return problem(404, "Not found", f"no captured message with id {id}")
    return Response("", status=204)


@bp.delete("/api/inbox")
async def delete_all() -> Response:
    if not same_origin(request):
        return problem(403, "Forbidden", "cross-site request refused")
    return jsonify({"deleted": await store().delete_all()})
