"""The web layer: browser form, JSON API, OpenAPI docs, readiness, and their error shape.

Layout (one job per module)::

    schemas    pydantic models shared by form, API and /openapi.json
    problems   RFC 9457 problem details
    tenants    which tenant each API key acts for, and its scopes (MAILSVC_API_KEYS_FILE)
    auth       API keys, CSRF, the open-relay guard
    sessions   the form's sign-in, revoked server-side at sign-out
    ratelimit  per-tenant token buckets; failed keys and sign-ins per client address
    inline_templates   request-supplied Jinja strings, sandboxed and capped
    jsonscan   a JSON object whose big array is walked an element at a time
    bulkstream a bulk request: checked in one walk, built and stored in chunks in another
    compose    models -> envelopes -> one atomic enqueue
    unsublinks signed one-click unsubscribe tokens and the links and headers made from them
    unreadbody the rest of a body a handler did not read: drained, or Connection: close (keep-alive kept honest)
    api, forms, openapi, health, unsubscribe, metricsroute, outboxpage   the routes
    doclimits              the OpenAPI schemas narrowed to this deployment (limits, templates, sender)

``register`` refuses to start an open relay (a real relay and no keys) with a
:class:`~mailsvc.errors.ConfigError` naming ``MAILSVC_API_KEYS``.
"""

from __future__ import annotations

import secrets

from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from ..config import ServiceConfig
from ..services import services
from . import api, events_api, forms, health, metricsroute, openapi, outboxpage, suppressions, unsubscribe
from .auth import check_startup
from .problems import ProblemException, problem_response
from .sessions import CookieSessions
from .state import WebState
from .unreadbody import KeepAliveConnection

__all__ = ["register"]


def register(app: Quart, service: ServiceConfig) -> WebState:
    """Attach the form, API, docs and readiness routes, and the problem+json error handlers."""
    check_startup(service)
    web = service.web
    secure = web.secure_cookies if web.secure_cookies is not None else not service.dev_mode
    app.secret_key = web.secret_key.get_secret_value() if web.secret_key else secrets.token_urlsafe(32)
    app.config.update(
        MAX_CONTENT_LENGTH=web.max_request_bytes,
        BODY_TIMEOUT=service.body_timeout,  # a slow body: 408 and the connection closed (issue 13, finding 9)
        MAX_FORM_MEMORY_SIZE=min(web.max_request_bytes, 4 * 1024 * 1024),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure,
        SESSION_COOKIE_NAME="mailsvc_session",
    )
    app.session_interface = CookieSessions()
    app.asgi_http_class = KeepAliveConnection  # an early 401/413 must not cost the next request on the connection
    state = WebState.from_service(service, services(app))
    app.url_map.converters["message_id"] = api.MessageIdConverter
    for bp in (
        api.bp,
        events_api.bp,
        forms.bp,
        openapi.bp,
        health.bp,
        unsubscribe.bp,
        metricsroute.bp,
        suppressions.bp,
        outboxpage.bp,
    ):
        app.register_blueprint(bp)

    @app.errorhandler(ProblemException)
    async def _problem(exc: ProblemException) -> Response:
        return problem_response(exc)

    @app.errorhandler(HTTPException)
    async def _http(exc: HTTPException) -> Response | HTTPException:
        """Routing errors (404, 405) and 413 on the API as problem+json; pages keep Quart's default."""
        if request.path.startswith("/api/") and exc.code is not None:
            detail = exc.description if exc.code != 413 else f"the request is larger than {web.max_request_bytes} bytes"
            # RFC 9110: a 405 says which methods the resource has (werkzeug computed them for its own page).
            allow = (
                {"Allow": ", ".join(exc.valid_methods)}
                if isinstance(exc, MethodNotAllowed) and exc.valid_methods
                else None
            )
            return problem_response(ProblemException(exc.code, detail, headers=allow))
        return exc

    return state
