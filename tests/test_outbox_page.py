"""The operator's /outbox page through the real app: counts, chart, search, timeline, retry now, cancel,
CSRF, tenants, hostile query values; SQLite and PostgreSQL, a real aiosmtpd relay (451 first, then 250)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from quart.typing import TestClientProtocol as Client

from mailsvc.outbox.events import MinuteCounts
from mailsvc.web.outboxpage import chart
from tests.pgtools import fresh_schema
from tests.servers import RecordingHandler
from tests.webkit import AUTH, KEY, Svc, hidden, running

OTHER = "other-tenant-key"


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    else:
        async with fresh_schema("opage") as url:
            yield url


def opts(database_url: str) -> dict[str, Any]:
    # Retries an hour apart: a deferred message is sent again only when "Retry now" is pressed.
    return dict(
        api_keys=(SecretStr(KEY), SecretStr(OTHER)),
        service={"database_url": database_url, "retry_first": 3600.0, "retry_max": 3600.0},
    )


async def wait_for(cond: Any, timeout: float = 20.0) -> None:
    """A guard against hanging, not an assertion on time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await cond() and loop.time() < deadline:
        await asyncio.sleep(0.02)


async def sign_in(client: Client, key: str = KEY) -> str:
    """Sign in through the form's page; return the session's CSRF token (as /outbox shows it)."""
    page = await (await client.get("/signin?next=/outbox")).get_data(as_text=True)
    r = await client.post("/signin", form={"csrf_token": hidden(page, "csrf_token"), "key": key, "next": "/outbox"})
    assert r.status_code == 302 and r.headers["Location"] == "/outbox"
    # Sign-in starts a fresh session; its CSRF token is the one every page of it shows.
    return page_token(await (await client.get("/signin")).get_data(as_text=True))


def page_token(html: str) -> str:
    return hidden(html, "csrf_token")


async def post(svc: Svc, body: dict[str, Any], auth: dict[str, str] = AUTH) -> str:
    r = await svc.client.post("/api/messages", json=body, headers=auth)
    assert r.status_code == 202, await r.get_data(as_text=True)
    return str((await r.get_json())["id"])


async def state(svc: Svc, id_: str) -> str:
    r = await svc.client.get(f"/api/messages/{id_}", headers=AUTH)
    return str((await r.get_json())["state"])


async def text(client: Client, path: str) -> tuple[int, str]:
    r = await client.get(path)
    return r.status_code, await r.get_data(as_text=True)


async def test_counts_search_timeline_retry_now_and_cancel(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, database_url: str
) -> None:
    handler.data_reply = "451 4.3.0 mailbox busy, try later"
    async with running(smtp_port, handler, tmp_path, **opts(database_url)) as svc:
        # Not signed in: to the form's sign-in, coming back here.
        r = await svc.client.get("/outbox")
        assert r.status_code == 302 and r.headers["Location"].startswith("/signin?next=")
        id_ = await post(svc, {"to": "ann@example.com", "subject": "Hi", "text": "x", "tags": ["vip"]})
        await wait_for(lambda: _is(svc, id_, "deferred"))
        assert await state(svc, id_) == "deferred"
        later = await post(
            svc,
            {"to": "bob@example.com", "subject": "Later", "text": "x", "send_at": _iso(timedelta(hours=2))},
        )
        token = await sign_in(svc.client)

        code, page = await text(svc.client, "/outbox")
        assert code == 200
        assert re.search(r'data-state="deferred">1<', page) and re.search(r'data-state="scheduled">1<', page)
        assert re.search(r'<dd id="pending">2<', page)
        assert f'href="/outbox/{id_}"' in page and f'href="/outbox/{later}"' in page
        assert "451 mailbox busy, try later" in page or "451 4.3.0 mailbox busy" in page
        assert "<svg" in page and "<script" not in page

        # Search: by recipient, tag and status (each narrows the list).
        _, page = await text(svc.client, "/outbox?to=ann%40example.com&tag=&status=")
        assert f"/outbox/{id_}" in page and f"/outbox/{later}" not in page
        _, page = await text(svc.client, "/outbox?tag=vip")
        assert f"/outbox/{id_}" in page and f"/outbox/{later}" not in page
        _, page = await text(svc.client, "/outbox?status=scheduled")
        assert f"/outbox/{id_}" not in page and f"/outbox/{later}" in page
        _, page = await text(svc.client, "/outbox?to=nobody%40example.com")
        assert 'id="no-messages"' in page

        # The timeline: queued, sending, deferred with the relay's reply.
        code, page = await text(svc.client, f"/outbox/{id_}")
        assert code == 200 and "Retry now" in page
        timeline = page.split('id="timeline"', 1)[1]
        assert [t for t in re.findall(r"<strong>(\w+)</strong>", timeline)] == ["queued", "sending", "deferred"]

        # Without the CSRF token: refused, nothing changes.
        r = await svc.client.post(f"/outbox/{id_}/retry", form={})
        assert r.status_code == 403 and "security token" in await r.get_data(as_text=True)
        assert await state(svc, id_) == "deferred" and not handler.received

        handler.data_reply = None  # the relay accepts from now on
        r = await svc.client.post(f"/outbox/{id_}/retry", form={"csrf_token": token})
        assert r.status_code == 303 and r.headers["Location"] == f"/outbox/{id_}?done=retried"
        [got] = await svc.delivered(1)
        assert got.rcpt_tos == ["ann@example.com"]
        await wait_for(lambda: _is(svc, id_, "delivered"))
        _, page = await text(svc.client, f"/outbox/{id_}?done=retried")
        assert "delivered" in re.findall(r"<strong>(\w+)</strong>", page) and "Retry now" not in page

        # The chart counts the delivery (in the minute it happened).
        _, page = await text(svc.client, "/outbox")
        assert re.search(r"<p class=\"muted\"[^>]*>1 delivered", page)

        # Cancel the scheduled one.
        r = await svc.client.post(f"/outbox/{later}/cancel", form={"csrf_token": "wrong"})
        assert r.status_code == 403
        r = await svc.client.post(f"/outbox/{later}/cancel", form={"csrf_token": token})
        assert r.status_code == 303
        assert await state(svc, later) == "cancelled"
        _, page = await text(svc.client, f"/outbox/{later}")
        assert "cancelled" in re.findall(r"<strong>(\w+)</strong>", page)


async def test_another_tenants_message_is_404_everywhere(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, database_url: str
) -> None:
    handler.data_reply = "451 4.3.0 later"
    async with running(smtp_port, handler, tmp_path, **opts(database_url)) as svc:
        id_ = await post(svc, {"to": "ann@example.com", "subject": "Hi", "text": "x"})
        await wait_for(lambda: _is(svc, id_, "deferred"))
        other = svc.app.test_client()
        token = await sign_in(other, OTHER)
        _, page = await text(other, "/outbox")
        assert id_ not in page and re.search(r'<dd id="pending">0<', page)
        unknown = "0" * 32
        for path in (f"/outbox/{id_}", f"/outbox/{unknown}"):
            assert (await other.get(path)).status_code == 404
            for action in ("retry", "cancel"):
                r = await other.post(f"{path}/{action}", form={"csrf_token": token})
                assert r.status_code == 404
        assert await state(svc, id_) == "deferred"  # untouched
        # Nor is it found by searching for its recipient.
        _, page = await text(other, "/outbox?to=ann%40example.com")
        assert 'id="no-messages"' in page and id_ not in page


@pytest.mark.parametrize(
    "query, field",
    [
        ("to=%00", "to"),
        ("to=" + "a" * 2000, "to"),
        ("to=%ED%A0%80", None),  # a lone surrogate's bytes: read as U+FFFD by the URL decoder, so no match
        ("tag=%3Cscript%3E", "tag"),
        ("tag=" + "t" * 65, "tag"),
        ("status=nope", "status"),
        ("status=%0Adelivered", "status"),
        ("cursor=garbage!", "cursor"),
        ("cursor=" + "W10", "cursor"),  # base64 of [] : well-formed, not ours
        ("cursor=" + "x" * 5000, "cursor"),
    ],
)
async def test_hostile_query_values_are_a_clear_422(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, query: str, field: str | None
) -> None:
    async with running(smtp_port, handler, tmp_path, **opts(f"sqlite:///{tmp_path / 'o.sqlite3'}")) as svc:
        await sign_in(svc.client)
        code, page = await text(svc.client, f"/outbox?{query}")
        if field is None:
            assert code == 200 and 'id="no-messages"' in page
            return
        assert code == 422, page[:500]
        error = re.search(r'id="query-error">([^<]*)<', page)
        assert error and error.group(1).startswith(f"{field}: ")
        assert "<script>" not in page


@pytest.mark.parametrize("path", ["/outbox/..%2F..", "/outbox/" + "a" * 65, "/outbox/%ED%A0%80", "/outbox/a%00b"])
async def test_hostile_ids_are_404(smtp_port: int, handler: RecordingHandler, tmp_path: Path, path: str) -> None:
    async with running(smtp_port, handler, tmp_path, **opts(f"sqlite:///{tmp_path / 'o.sqlite3'}")) as svc:
        await sign_in(svc.client)
        assert (await svc.client.get(path)).status_code == 404
        token = page_token(await (await svc.client.get("/signin")).get_data(as_text=True))
        r = await svc.client.post(f"{path}/retry", form={"csrf_token": token})
        assert r.status_code == 404


def test_chart_geometry() -> None:
    start = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    c = chart(MinuteCounts(start, [0, 5, 10] + [0] * 57, False), width=600, height=120)
    assert c.total == 15 and c.peak == 10 and len(c.bars) == 60
    assert c.bars[2].height == 116 and c.bars[1].height == 58 and c.bars[0].height == 0
    assert c.bars[1].label == "10:01" and c.bars[-1].label == "10:59"
    empty = chart(MinuteCounts(start, [0] * 60, False))
    assert empty.peak == 0 and all(b.height == 0 for b in empty.bars)


async def _is(svc: Svc, id_: str, want: str) -> bool:
    return await state(svc, id_) == want


def _iso(ahead: timedelta) -> str:
    return (datetime.now(UTC) + ahead).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_admin_sees_failing_webhooks_and_replays_one(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    from tests.test_webhooks import ADMIN, Receiver, endpoint, service

    alive = {"yes": False}
    async with Receiver(lambda n: 200 if alive["yes"] else 500) as rx:
        hook = endpoint(rx.url, events=["delivered"])
        async with service(smtp_port, handler, tmp_path, hook, webhook_give_up=0.3) as svc:
            admin = {"Authorization": f"Bearer {ADMIN}"}
            await asyncio.sleep(0.2)  # the endpoint's cursor starts at the newest event once the dispatcher runs
            await post(
                svc, {"to": "ann@example.com", "subject": "Hi", "text": "x"}, {"Authorization": "Bearer shop-key"}
            )

            async def failed() -> list[Any]:
                r = await svc.client.get("/api/webhooks/deliveries?status=failed", headers=admin)
                return list((await r.get_json())["deliveries"])

            await wait_for(lambda: _nonempty(failed()))
            [row] = await failed()
            # A tenant's key: no webhook section, and its replay is refused.
            shop = svc.app.test_client()
            token = await sign_in(shop, "shop-key")
            _, page = await text(shop, "/outbox")
            assert 'id="webhooks"' not in page
            r = await shop.post(f"/outbox/webhooks/{row['id']}/replay", form={"csrf_token": token})
            assert r.status_code == 403
            # The operator's key: listed with its error, and replayed.
            ops = svc.app.test_client()
            token = await sign_in(ops, ADMIN)
            _, page = await text(ops, "/outbox")
            section = page.split('id="webhooks"', 1)[1]
            assert f'action="/outbox/webhooks/{row["id"]}/replay"' in section and "HTTP 500" in section
            r = await ops.post(f"/outbox/webhooks/{row['id']}/replay", form={})
            assert r.status_code == 403  # no CSRF token
            assert await failed()
            alive["yes"] = True
            r = await ops.post(f"/outbox/webhooks/{row['id']}/replay", form={"csrf_token": token})
            assert r.status_code == 303
            assert (await ops.post("/outbox/webhooks/999999/replay", form={"csrf_token": token})).status_code == 404
            await wait_for(lambda: _delivered_to(rx))
            assert rx.statuses[-1] == 200


async def _nonempty(rows: Any) -> bool:
    return bool(await rows)


async def _delivered_to(rx: Any) -> bool:
    return 200 in rx.statuses
