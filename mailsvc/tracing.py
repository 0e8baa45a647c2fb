"""OpenTelemetry tracing, when ``pip install mailsvc[otel]`` put the API there: off, and free, otherwise.

Spans: one per HTTP request (:func:`asgi_middleware`, continuing a caller's ``traceparent``),
one per enqueue (``mailsvc.enqueue``), one per claim (``mailsvc.claim``) and one per SMTP
transaction (``mailsvc.smtp_send``). Each carries the outbox's message id
(``mailsvc.message.id``) where there is one, so an accepted message's spans and its delivery's
are found together across processes. No span holds an address, a subject or a body.

Why :func:`tracer` answers ``None`` unless an SDK provider is configured: the import is tried once,
here; without the extra each call site pays one ``is None`` check. With the API installed but no
SDK provider set (``trace.set_tracer_provider``, or ``opentelemetry-instrument``), OpenTelemetry's
no-op tracer would still cost a span object per request, per enqueue and per send (about 12 % of a
single POST's CPU, measured with py-spy), so mailsvc makes no spans at all until a provider exists.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

try:
    from opentelemetry import propagate, trace
except ImportError:  # the [otel] extra is not installed: tracing is off
    _INSTALLED = False
else:
    _INSTALLED = True

__all__ = ["asgi_middleware", "current_traceparent", "link_to", "tracer"]

_NO_PROVIDER = ("ProxyTracerProvider", "NoOpTracerProvider")
_cache: list[Any] = [None, None]  # [the provider last seen, its mailsvc tracer or None]


def tracer() -> Tracer | None:
    """mailsvc's tracer when an OpenTelemetry SDK provider is configured in this process, else None."""
    if not _INSTALLED:
        return None
    provider = trace.get_tracer_provider()
    if provider is not _cache[0]:
        _cache[0] = provider
        _cache[1] = None if type(provider).__name__ in _NO_PROVIDER else provider.get_tracer("mailsvc")
    found: Tracer | None = _cache[1]
    return found


ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]  # (scope, receive, send), as any ASGI framework types it


def asgi_middleware(app: ASGIApp) -> ASGIApp:
    """``app`` with a server span around each HTTP request (the caller's ``traceparent`` is its parent).

    Installed by :func:`mailsvc.app.create_app` when the package is there; a request is traced only
    while :func:`tracer` has a provider to record it.
    """

    async def traced(scope: Any, receive: Any, send: Callable[[Any], Awaitable[None]]) -> None:
        active = tracer()
        if active is None or scope.get("type") != "http":
            await app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"traceparent"}
        parent = propagate.extract(headers) if headers else None
        method = str(scope.get("method", ""))
        with active.start_as_current_span(
            f"HTTP {method}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": str(scope.get("path", ""))},
        ) as span:

            async def send_status(message: Any) -> None:
                if message.get("type") == "http.response.start":
                    status = int(message.get("status", 0))
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(trace.StatusCode.ERROR)
                await send(message)

            await app(scope, receive, send_status)

    return traced


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span (the accepting request's), stored with a queued message."""
    if tracer() is None:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def link_to(traceparent: str | None) -> list[Any]:
    """Span links to a stored ``traceparent`` (none when absent or unreadable): delivery -> acceptance."""
    if traceparent is None or tracer() is None:
        return []
    context = trace.get_current_span(propagate.extract({"traceparent": traceparent})).get_span_context()
    return [trace.Link(context)] if context.is_valid else []
