"""OpenTelemetry tracing, when ``pip install mailsvc[otel]`` put the API there: off, and free, otherwise.

Spans: one per HTTP request (:func:`asgi_middleware`, continuing a caller's ``traceparent``),
one per enqueue (``mailsvc.enqueue``), one per claim (``mailsvc.claim``) and one per SMTP
transaction (``mailsvc.smtp_send``). Each carries the outbox's message id
(``mailsvc.message.id``) where there is one, so an accepted message's spans and its delivery's
are found together across processes. No span holds an address, a subject or a body.

Why a module-level :data:`TRACER` that is ``None`` without the extra: the import is tried once,
here, and each call site pays one ``is None`` check and nothing else. With the API installed and
no SDK configured, OpenTelemetry's own no-op tracer answers (configure the SDK, its exporter
and sampler in the process, as for any OpenTelemetry application).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

try:
    from opentelemetry import propagate, trace
except ImportError:  # the [otel] extra is not installed: tracing is off
    TRACER: Tracer | None = None
else:
    TRACER = trace.get_tracer("mailsvc")

__all__ = ["TRACER", "asgi_middleware"]

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]  # (scope, receive, send), as any ASGI framework types it


def asgi_middleware(app: ASGIApp) -> ASGIApp:
    """``app`` with a server span around each HTTP request (the caller's ``traceparent`` is its parent).

    Only installed when :data:`TRACER` is not None (:func:`mailsvc.app.create_app`).
    """
    tracer = TRACER
    assert tracer is not None

    async def traced(scope: Any, receive: Any, send: Callable[[Any], Awaitable[None]]) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"traceparent"}
        parent = propagate.extract(headers) if headers else None
        method = str(scope.get("method", ""))
        with tracer.start_as_current_span(
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
