"""The browser form (``GET``/``POST /``) and its sign-in (``/signin``, ``/signout``).

Why the form goes through :class:`~mailsvc.web.schemas.MessageIn`: it is the
same validation as the JSON API, so the form can never accept what the API
refuses. Errors are shown next to the field with the user's values kept; a
per-page nonce doubles as the Idempotency-Key, so a double-click queues once.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError
from quart import Blueprint, Response, redirect, render_template, request, session, url_for
from werkzeug.datastructures import MultiDict

from . import compose
from .auth import Principal, csrf_token, verify_csrf
from .problems import ProblemException, validation_problem
from .schemas import MessageIn, split_addresses
from .state import WebState, web_state

__all__ = ["bp"]

bp = Blueprint("mailsvc_form", __name__)

# API field (first path segment) -> form field the message is shown next to.
_FORM_FIELD = {
    "to": "email",
    "cc": "email",
    "bcc": "email",
    "text": "message",
    "html": "message",
    "subject": "subject",
    "template": "template",
    "context": "template",
    "attachments": "attachments",
}


def _form_field(path: str) -> str:
    head = path.split("[", 1)[0].split(".", 1)[0]
    return _FORM_FIELD.get(head, "form")


def _safe_next(target: str | None) -> str:
    r"""Only a path on this site: no open redirect through ``?next=``.

    Checked as a browser would read it: browsers drop tabs and newlines from a URL and
    read ``\\`` as ``/``, so ``/\t/evil.test`` and ``/\\evil.test`` mean ``//evil.test``
    (another host). Any control character, space or backslash, and anything that
    parses with a scheme or a host, sends the user to ``/`` instead.

        >>> [_safe_next(t) for t in ("/inbox?x=1", "/\t/evil.test", "//evil.test", "/\\evil.test", "https://x")]
        ['/inbox?x=1', '/', '/', '/', '/']
    """
    if not target or len(target) > 2000 or not target.startswith("/") or target.startswith("//"):
        return "/"
    if "\\" in target or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


async def _render_form(
    ws: WebState,
    values: dict[str, Any],
    errors: dict[str, list[str]],
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    renderer = ws.mail.renderer
    names = renderer.names() if renderer is not None else []
    html = await render_template(
        "form.html",
        values=values,
        errors=errors,
        templates=names,
        csrf_token=csrf_token(),
        nonce=secrets.token_urlsafe(16),
        signed_in=ws.keys.from_session() is not None,
        open_service=ws.keys.open,
        max_attachment=ws.config.max_attachment_bytes,
    )
    return Response(html, status=status, headers=headers or {}, content_type="text/html; charset=utf-8")


def _form_principal(ws: WebState) -> Principal | None:
    if ws.keys.open:
        return Principal(f"anon:{request.remote_addr or '-'}", "anonymous")
    return ws.keys.from_session()


@bp.get("/")
async def form() -> Response:
    ws = web_state()
    if _form_principal(ws) is None:
        return redirect(url_for("mailsvc_form.signin", next="/"))  # type: ignore[return-value]
    return await _render_form(ws, {}, {})


async def _to_data(form: MultiDict[str, str]) -> dict[str, Any]:
    """The form's fields as the API's JSON shape."""
    to = split_addresses(form.get("email", ""))
    template = (form.get("template") or "").strip()
    data: dict[str, Any] = {"to": to}
    if template:
        first = to[0] if to else ""
        name = first.split("<", 1)[0].strip().strip('"') if "<" in first else first.split("@", 1)[0]
        data["template"] = template
        data["context"] = {
            "name": name,
            "email": form.get("email", ""),
            "subject": form.get("subject", ""),
            "message": form.get("message", ""),
        }
    else:
        data["subject"] = form.get("subject", "")
        data["text"] = form.get("message", "")
    files = await request.files
    attachments = []
    for f in files.getlist("attachments"):
        if not f.filename:
            continue  # the browser's empty file input
        content = f.read()
        attachments.append(
            {
                "filename": f.filename,
                "content_type": f.mimetype or "application/octet-stream",
                "content": base64.b64encode(content).decode("ascii"),
            }
        )
    data["attachments"] = attachments
    return data


async def _refused(
    ws: WebState, principal: Principal, form: MultiDict[str, str], values: dict[str, str]
) -> Response | None:
    """The form again with why, for a cross-site post or a stale token (403) or too many sends (429)."""
    try:
        verify_csrf(form.get("csrf_token"), request)
    except ProblemException as exc:
        return await _render_form(ws, values, {"form": [exc.detail or "forbidden"]}, status=403)
    wait = ws.limiter.take(principal.id)
    if wait is not None:
        return await _render_form(
            ws,
            values,
            {"form": ["Too many messages; wait a moment and try again."]},
            status=429,
            headers={"Retry-After": str(max(1, int(wait + 0.999)))},
        )
    return None


@bp.post("/")
async def submit() -> Response:
    ws = web_state()
    principal = _form_principal(ws)
    if principal is None:
        return redirect(url_for("mailsvc_form.signin", next="/"))  # type: ignore[return-value]
    form = await request.form
    values = {k: form.get(k, "") for k in ("email", "subject", "message", "template")}
    refused = await _refused(ws, principal, form, values)
    if refused is not None:
        return refused
    errors: dict[str, list[str]] = {}
    try:
        data = await _to_data(form)
        try:
            m = MessageIn.model_validate(data, context=ws.check_context())
        except ValidationError as exc:
            raise validation_problem(exc, None) from None
        envelope = compose.build_single(ws.mail, m)
        nonce = form.get("nonce") or None
        result = await compose.enqueue(
            ws.outbox(),
            [envelope],
            principal=principal.id,
            idempotency_key=f"form:{nonce}"[:200] if nonce else None,
            fingerprint=compose.fingerprint_of("form", m.model_dump_json()),
            batch=False,
        )
    except ProblemException as exc:
        for e in exc.errors:
            errors.setdefault(_form_field(e.field), []).append(e.reason)
        if not errors:
            errors["form"] = [exc.detail or exc.title]
        return await _render_form(ws, values, errors, status=exc.status, headers=exc.headers)
    id_ = result.ids[0]
    html = await render_template(
        "sent.html", id=id_, status_url=f"/api/messages/{id_}", recipients=len(envelope.recipients)
    )
    return Response(html, status=200, content_type="text/html; charset=utf-8")


@bp.get("/signin")
async def signin() -> Response:
    ws = web_state()
    html = await render_template(
        "signin.html",
        csrf_token=csrf_token(),
        next=_safe_next(request.args.get("next")),
        error=None,
        open_service=ws.keys.open,
    )
    return Response(html, content_type="text/html; charset=utf-8")


@bp.post("/signin")
async def signin_post() -> Response:
    ws = web_state()
    form = await request.form
    target = _safe_next(form.get("next"))
    error: str | None = None
    status = 200
    try:
        verify_csrf(form.get("csrf_token"), request)
    except ProblemException as exc:
        error, status = exc.detail, 403
    if error is None and ws.limiter.take(f"signin:{request.remote_addr}") is not None:
        error, status = "Too many attempts; wait a moment.", 429
    if error is None:
        kid = ws.keys.identify(form.get("key", ""))
        if kid is None:
            error, status = "That key is not valid.", 401
        else:
            session.clear()
            session["key_id"] = kid
            return redirect(target)  # type: ignore[return-value]
    html = await render_template(
        "signin.html", csrf_token=csrf_token(), next=target, error=error, open_service=ws.keys.open
    )
    return Response(html, status=status, content_type="text/html; charset=utf-8")


@bp.post("/signout")
async def signout() -> Response:
    form = await request.form
    verify_csrf(form.get("csrf_token"), request)
    session.clear()
    return redirect(url_for("mailsvc_form.signin"))  # type: ignore[return-value]
