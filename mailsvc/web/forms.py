"""The browser form (``GET``/``POST /``) and its sign-in (``/signin``, ``/signout``).

Why the form goes through :class:`~mailsvc.web.schemas.MessageIn`: it is the
same validation as the JSON API, so the form can never accept what the API
refuses. Errors are shown next to the field with the user's values kept; a
per-page nonce doubles as the Idempotency-Key, so a double-click queues once.
The signed-in user acts as the tenant of the key it signed in with (its mail, its
rate limit, its scopes); sign-out revokes the session on every node (:mod:`.sessions`).
Failed sign-ins count against the client address like failed API keys.
"""

from __future__ import annotations

import base64
import logging
import math
import secrets
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError
from quart import Blueprint, Response, redirect, render_template, request, url_for
from werkzeug.datastructures import MultiDict

from . import compose, sessions
from .auth import Principal, csrf_token, verify_csrf
from .problems import ProblemException, validation_problem
from .ratelimit import client_address
from .schemas import MessageIn, split_addresses
from .state import WebState, web_state
from .tenants import Scope

__all__ = ["bp"]

bp = Blueprint("mailsvc_form", __name__)
log = logging.getLogger("mailsvc.web")

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
        signed_in=await ws.session_principal() is not None,
        open_service=ws.keys.open,
        max_attachment=ws.config.max_attachment_bytes,
    )
    return Response(html, status=status, headers=headers or {}, content_type="text/html; charset=utf-8")


async def _form_principal(ws: WebState) -> Principal | None:
    if ws.keys.open:
        return Principal.anonymous(request.remote_addr)
    return await ws.session_principal()


@bp.get("/")
async def form() -> Response:
    ws = web_state()
    if await _form_principal(ws) is None:
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
    """The form again with why: cross-site, a stale token or a key that may not send (403), too many sends (429)."""
    try:
        verify_csrf(form.get("csrf_token"), request)
        principal.require(Scope.SEND)
    except ProblemException as exc:
        return await _render_form(ws, values, {"form": [exc.detail or "forbidden"]}, status=403)
    wait = ws.limiter.take(principal.bucket)
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
    principal = await _form_principal(ws)
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
            principal=principal,
            idempotency_key=f"form:{nonce}"[:200] if nonce else None,
            fingerprint=compose.fingerprint_of("form", m.model_dump_json()),
            batch=False,
            stream=m.stream,
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
    headers: dict[str, str] = {}
    address = client_address(request.remote_addr)
    try:
        verify_csrf(form.get("csrf_token"), request)
    except ProblemException as exc:
        error, status = exc.detail, 403
    wait = ws.failures.blocked(address) if error is None else None
    if wait is not None:
        error, status = "Too many failed attempts from your address; wait a minute and try again.", 429
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    if error is None:
        key = ws.keys.identify(form.get("key", ""))
        if key is None:
            ws.failures.failed(address)
            log.info("refused a sign-in with an invalid key from %s", address)  # never the key
            error, status = "That key is not valid.", 401
        else:
            sessions.sign_in(key)
            return redirect(target)  # type: ignore[return-value]
    html = await render_template(
        "signin.html", csrf_token=csrf_token(), next=target, error=error, open_service=ws.keys.open
    )
    return Response(html, status=status, headers=headers, content_type="text/html; charset=utf-8")


@bp.post("/signout")
async def signout() -> Response:
    ws = web_state()
    form = await request.form
    verify_csrf(form.get("csrf_token"), request)
    if not ws.keys.open:
        await sessions.sign_out(ws.outbox())
    return redirect(url_for("mailsvc_form.signin"))  # type: ignore[return-value]
