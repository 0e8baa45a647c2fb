"""Webhooks through the real app: events POSTed to a real HTTP receiver, verified with ``standardwebhooks``.

The receiver is an asyncio HTTP/1.1 server started by the test; it answers each request with the status
the test scripts (500s, a stall past the timeout) and records what it got.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError
from standardwebhooks.webhooks import Webhook

from mailsvc.config import ServiceConfig
from mailsvc.webhookconfig import WebhookEndpoint
from tests.servers import RecordingHandler
from tests.webkit import AUTH, Svc, running

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
ADMIN = "ops-key"
TENANTS = {"shop": {"keys": ["shop-key"]}, "ops": {"keys": [{"key": ADMIN, "scopes": ["admin"]}]}}


class Receiver:
    """Answers request n (from 0) with ``answer(n)``: a status, or None to stall until the client gives up."""

    def __init__(self, answer: Callable[[int], int | None] = lambda n: 204) -> None:
        self.answer = answer
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.count = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hooks"

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                n, self.count = self.count, self.count + 1
                status = self.answer(n)
                if status is None:  # stall: say nothing until the client gives up and hangs up
                    await reader.read()
                    return
                self.statuses.append(status)
                self.requests.append((headers, body))
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def verified(self) -> list[dict[str, Any]]:
        """Every accepted request's body, each checked against its signature (raises if any fails)."""
        hook = Webhook(SECRET)
        return [hook.verify(body, headers) for headers, body in self.requests]


def endpoint(url: str, **kw: Any) -> WebhookEndpoint:
    return WebhookEndpoint(name=kw.pop("name", "crm"), url=url, secret=SecretStr(SECRET), **kw)


@asynccontextmanager
async def service(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, *endpoints: WebhookEndpoint, **extra: Any
) -> AsyncIterator[Svc]:
    keys = tmp_path / "tenants.json"
    keys.write_text(json.dumps(TENANTS))
    options = {"webhooks": endpoints, "webhook_retry_first": 0.05, "webhook_timeout": 1.0, **extra}
    async with running(smtp_port, handler, tmp_path, api_keys_file=keys, service=options) as svc:
        yield svc


async def until(pred: Callable[[], bool], within: float = 20.0) -> None:
    """A liveness bound (fail instead of hanging), not a timing assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not pred():
        if loop.time() > deadline:
            pytest.fail("condition never held")
        await asyncio.sleep(0.02)


async def delivery_row(svc: Svc, settled: Callable[[dict[str, Any]], bool], within: float = 20.0) -> dict[str, Any]:
    """The one webhook delivery's row once ``settled`` holds for it (a liveness bound, as :func:`until`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        r = await svc.client.get("/api/webhooks/deliveries", headers={"Authorization": f"Bearer {ADMIN}"})
        [row] = (await r.get_json())["deliveries"]
        if settled(row):
            return dict(row)
        if loop.time() > deadline:
            pytest.fail(f"the delivery never settled: {row}")
        await asyncio.sleep(0.02)


def events_of(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for b in bodies:
        out += [item["data"] for item in b["data"]] if b["type"] == "batch" else [b["data"]]
    return out


async def post(svc: Svc, to: str, key: str = "shop-key") -> str:
    r = await svc.client.post(
        "/api/messages",
        json={"to": to, "subject": "Hi", "text": "x"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 202, await r.get_data(as_text=True)
    return str((await r.get_json())["id"])


async def test_events_are_posted_signed_and_in_order_per_message(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    async with Receiver() as rx, service(smtp_port, handler, tmp_path, endpoint(rx.url)) as svc:
        ids = [await post(svc, f"user{i}@example.com") for i in range(5)]
        await until(lambda: sum(e["type"] == "delivered" for e in events_of(rx.verified())) == 5)
    got = events_of(rx.verified())
    for id_ in ids:
        mine = [e["type"] for e in got if e["message"] == id_]
        assert mine == ["queued", "sending", "delivered"], (id_, mine)
    headers, _ = rx.requests[0]
    assert headers["webhook-id"].startswith("evt_crm_") and headers["content-type"] == "application/json"


async def test_500s_and_timeouts_are_retried_and_recorded(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    def answer(n: int) -> int | None:
        return {0: 500, 1: None, 2: 503}.get(n, 200)  # a 500, a stall past the timeout, a 503, then fine

    async with Receiver(answer) as rx:
        hook = endpoint(rx.url, events=["delivered"])
        async with service(smtp_port, handler, tmp_path, hook) as svc:
            id_ = await post(svc, "ann@example.com")
            await until(lambda: 200 in rx.statuses)
            # The receiver answered 200; the service records it once that answer is read: poll for the record.
            row = await delivery_row(svc, lambda r: r["status"] != "failing")
    assert rx.count == 4 and rx.statuses == [500, 503, 200]  # and a stall (timeout) between: retried until a 2xx
    [event] = events_of(rx.verified()[-1:])
    assert event["message"] == id_ and event["type"] == "delivered"
    assert row["status"] == "delivered" and row["attempts"] == 4


async def test_a_dead_endpoint_gives_up_and_a_replay_delivers(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    alive = {"yes": False}
    async with Receiver(lambda n: 200 if alive["yes"] else 500) as rx:
        hook = endpoint(rx.url, events=["delivered"])
        async with service(smtp_port, handler, tmp_path, hook, webhook_give_up=0.3) as svc:
            admin = {"Authorization": f"Bearer {ADMIN}"}
            await post(svc, "ann@example.com")

            async def failed() -> list[Any]:
                r = await svc.client.get("/api/webhooks/deliveries?status=failed", headers=admin)
                return list((await r.get_json())["deliveries"])

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while not await failed() and loop.time() < deadline:
                await asyncio.sleep(0.05)
            [row] = await failed()
            assert row["last_error"] == "HTTP 500" and row["next_attempt_at"] is None
            alive["yes"] = True
            r = await svc.client.post(f"/api/webhooks/deliveries/{row['id']}/replay", headers=admin)
            assert r.status_code == 202

            async def delivered() -> list[Any]:
                r = await svc.client.get("/api/webhooks/deliveries?status=delivered", headers=admin)
                return [d["id"] for d in (await r.get_json())["deliveries"]]

            deadline = loop.time() + 20
            while not await delivered() and loop.time() < deadline:
                await asyncio.sleep(0.05)
            assert await delivered() == [row["id"]]
            assert rx.statuses[-1] == 200 and set(rx.statuses[:-1]) == {500}
            # Not the operator: a tenant's key may not list or replay deliveries.
            r = await svc.client.get("/api/webhooks/deliveries", headers={"Authorization": "Bearer shop-key"})
            assert r.status_code == 403
            r = await svc.client.post("/api/webhooks/deliveries/999999/replay", headers=admin)
            assert r.status_code == 404


async def test_batched_endpoint_gets_arrays(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with Receiver() as rx:
        hook = endpoint(rx.url, events=["delivered"], batch=50)
        async with service(smtp_port, handler, tmp_path, hook) as svc:
            r = await svc.client.post(
                "/api/messages/bulk",
                json={"subject": "b", "text": "t", "recipients": [{"to": f"u{i}@example.com"} for i in range(30)]},
                headers={"Authorization": "Bearer shop-key"},
            )
            assert r.status_code == 202
            await until(lambda: len(events_of(rx.verified())) == 30)
    bodies = rx.verified()
    assert all(b["type"] == "batch" for b in bodies) and len(bodies) < 30


async def test_api_events_by_cursor_per_tenant(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with service(smtp_port, handler, tmp_path) as svc:
        mine = await post(svc, "ann@example.com")
        theirs = await post(svc, "bob@example.com", key=ADMIN)
        await svc.settle()
        seen: list[dict[str, Any]] = []
        cursor = ""
        while True:
            r = await svc.client.get(
                f"/api/events?limit=2&since={cursor}", headers={"Authorization": "Bearer shop-key"}
            )
            page = await r.get_json()
            if not page["events"]:
                break
            seen += page["events"]
            cursor = page["next"]
        assert [(e["message"], e["type"]) for e in seen] == [(mine, "queued"), (mine, "sending"), (mine, "delivered")]
        assert theirs not in {e["message"] for e in seen}
        r = await svc.client.get("/api/events?type=delivered", headers={"Authorization": f"Bearer {ADMIN}"})
        assert {e["message"] for e in (await r.get_json())["events"]} == {mine, theirs}
        for query, field in [
            ("type=sent", "type"),
            ("limit=0", "limit"),
            ("limit=99999999999999999999", "limit"),
            ("since=x1.2", "since"),
            ("since=%F0%9F%92%A9", "since"),
            ("message=../../etc", "message"),
        ]:
            r = await svc.client.get(f"/api/events?{query}", headers=AUTH)
            assert r.status_code == 422, query
            assert (await r.get_json())["errors"][0]["field"] == field


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"url": "http://example.com/h"}, "https"),
        ({"url": "https://user:pw@example.com/h"}, "credentials"),
        ({"url": "file:///etc/passwd"}, "https"),
        ({"secret": SecretStr("hunter2")}, "whsec_"),
        ({"secret": SecretStr("whsec_" + base64.b64encode(b"short").decode())}, "24 random bytes"),
        ({"events": ("delivered", "sent")}, "unknown event types"),
        ({"batch": 0}, "batch"),
        ({"name": "Bad Name"}, "name"),
    ],
)
def test_bad_webhook_settings_are_refused(fields: dict[str, Any], why: str) -> None:
    base: dict[str, Any] = {"name": "crm", "url": "https://example.com/h", "secret": SecretStr(SECRET)}
    with pytest.raises(ValidationError, match=why):
        WebhookEndpoint(**{**base, **fields})


def test_webhook_names_must_be_unique() -> None:
    one = endpoint("https://example.com/a")
    with pytest.raises(ValidationError, match="unique"):
        ServiceConfig(webhooks=(one, one))


def test_the_secret_is_never_in_a_repr() -> None:
    assert SECRET not in repr(endpoint("https://example.com/a"))


async def test_a_dead_endpoint_is_probed_not_hammered(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    """Every POST fails: the endpoint is paused after each failure and probed with one request at a time, so 100
    messages' events cost a handful of requests (not one per event) and every message is still delivered."""
    async with Receiver(lambda n: 503) as rx:
        async with service(smtp_port, handler, tmp_path, endpoint(rx.url, events=["delivered"])) as svc:
            r = await svc.client.post(
                "/api/messages/bulk",
                json={"subject": "b", "text": "t", "recipients": [{"to": f"u{i}@example.com"} for i in range(100)]},
                headers={"Authorization": "Bearer shop-key"},
            )
            assert r.status_code == 202
            await until(lambda: len(handler.received) == 100)
            await svc.settle()
            await asyncio.sleep(0.5)  # some probes happen meanwhile (pauses double from 0.05 s)
    assert 1 <= rx.count < 20, rx.count
