"""OpenTelemetry spans through the real app and worker, recorded by the SDK's in-memory exporter (real spans).

One provider per test process (OpenTelemetry allows the global one to be set once); each test
clears the exporter. Without the ``[otel]`` extra, tracing is off: checked in a process where
the ``opentelemetry`` package cannot be imported.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mailsvc.app import create_app
from mailsvc.config import MailConfig
from tests.servers import RecordingHandler
from tests.test_worker_process import REPO
from tests.webkit import AUTH, SENDER, service_config

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    return _EXPORTER


async def test_request_enqueue_claim_and_send_spans(
    tmp_path: Path, smtp_port: int, handler: RecordingHandler, exporter: InMemorySpanExporter
) -> None:
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    app = create_app(
        MailConfig(server="127.0.0.1", port=smtp_port, default_sender=SENDER, timeout=5.0),
        service_config(tmp_path, workers=1),
    )
    async with app.test_app() as test_app:
        client = test_app.test_client()
        resp = await client.post(
            "/api/messages",
            json={"to": "ann@example.com", "subject": "secret subject", "text": "secret body"},
            headers={**AUTH, "traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01"},
        )
        assert resp.status_code == 202
        id_ = (await resp.get_json())["id"]
        for _ in range(1500):
            if any(s.name == "mailsvc.smtp_send" for s in exporter.get_finished_spans()):
                break
            await asyncio.sleep(0.02)
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    request, enqueue, send = by_name["HTTP POST"], by_name["mailsvc.enqueue"], by_name["mailsvc.smtp_send"]
    assert request.context is not None and enqueue.context is not None and enqueue.parent is not None
    assert format(request.context.trace_id, "032x") == caller_trace  # the caller's trace continues
    assert request.attributes is not None and request.attributes["http.response.status_code"] == 202
    assert enqueue.parent.span_id == request.context.span_id and enqueue.context.trace_id == request.context.trace_id
    assert enqueue.attributes is not None and enqueue.attributes["mailsvc.message.id"] == (id_,)
    assert send.attributes is not None and send.attributes["mailsvc.message.id"] == id_
    assert tuple(send.attributes["smtp.reply_codes"]) == (250,)  # type: ignore[arg-type]
    # The delivery span links to the accepting request through the trace context stored with the message
    # (read back from the outbox by the worker's claim, as another process would read it).
    assert [(link.context.trace_id, link.context.span_id) for link in send.links] == [
        (request.context.trace_id, request.context.span_id)
    ]
    assert any(s.name == "mailsvc.claim" and (s.attributes or {}).get("mailsvc.claim.count") == 1 for s in spans)
    for s in spans:  # no address, subject or body in any span
        text = repr(dict(s.attributes or {}))
        assert "ann@example.com" not in text and "secret" not in text
    assert len(handler.received) == 1


def test_without_the_extra_tracing_is_off(tmp_path: Path) -> None:
    """``opentelemetry`` unimportable: no tracer, the app is not wrapped, and it still serves."""
    code = """
import sys
sys.modules["opentelemetry"] = None  # as if mailsvc[otel] were not installed
import asyncio
from mailsvc import tracing
from mailsvc.app import create_app
from mailsvc.config import MailConfig, ServiceConfig
assert tracing.tracer() is None
app = create_app(MailConfig(server="127.0.0.1", port=25, default_sender="s@example.com"),
                 ServiceConfig(dev_mode=False, workers=0, database_url="sqlite:///o.sqlite3",
                               web={"allow_anonymous": True}))
assert type(app).asgi_app is type(app).__dict__["asgi_app"] and "asgi_app" not in vars(app)
async def main():
    async with app.test_app() as t:
        r = await t.test_client().get("/healthz")
        assert r.status_code == 200
asyncio.run(main())
print("off")
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "off", done.stderr


def test_installed_without_a_provider_makes_no_spans(tmp_path: Path) -> None:
    """The API installed but no SDK provider configured: tracer() is None, so no span object is ever made."""
    code = """
from opentelemetry import trace
from mailsvc import tracing
assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
assert tracing.tracer() is None
from opentelemetry.sdk.trace import TracerProvider
trace.set_tracer_provider(TracerProvider())
assert tracing.tracer() is not None  # a provider set later is seen at the next call
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(REPO)}, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
