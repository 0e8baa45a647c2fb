"""Tags, metadata, send_at, listing and cancelling through the real app, on SQLite and PostgreSQL, to real aiosmtpd.

No timed assertions: a scheduled message's arrival is stamped by the SMTP server itself and compared with its
send_at (the outbox and the server read the same clock), and "nothing before" is checked only at a moment the
test has seen to be before send_at.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from mailsvc.outbox.core import OutboxCore
from tests.pgtools import fresh_schema
from tests.servers import RecordingHandler
from tests.webkit import AUTH, KEY, Svc, running

OTHER = "other-tenant-key"
OTHER_AUTH = {"Authorization": f"Bearer {OTHER}"}


class StampingHandler(RecordingHandler):
    """Records each message's arrival time (wall clock) beside it."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: list[float] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        self.arrived.append(time.time())
        return reply


@pytest.fixture
def handler() -> RecordingHandler:
    return StampingHandler()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    else:
        async with fresh_schema("sched") as url:
            yield url


def opts(database_url: str, workers: int = 1, **web: Any) -> dict[str, Any]:
    return dict(
        workers=workers,
        api_keys=(SecretStr(KEY), SecretStr(OTHER)),  # each key a tenant of its own
        service={"database_url": database_url},
        **web,
    )


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def msg(n: int = 0, **extra: Any) -> dict[str, Any]:
    return {"to": f"r{n}@example.com", "subject": f"m{n}", "text": "hi", **extra}


async def post(svc: Svc, body: dict[str, Any], auth: dict[str, str] = AUTH) -> str:
    r = await svc.client.post("/api/messages", json=body, headers=auth)
    assert r.status_code == 202, await r.get_data(as_text=True)
    return str((await r.get_json())["id"])


async def get(svc: Svc, path: str, auth: dict[str, str] = AUTH) -> tuple[int, Any]:
    r = await svc.client.get(path, headers=auth)
    return r.status_code, await r.get_json()


async def wait_for(cond: Any, timeout: float = 20.0) -> None:
    """A guard against hanging, not an assertion on time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await cond() and loop.time() < deadline:
        await asyncio.sleep(0.02)


async def test_send_at_waits_then_sends_with_labels_stored(
    smtp_port: int, handler: StampingHandler, tmp_path: Path, database_url: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **opts(database_url)) as svc:
        send_at = datetime.now(UTC) + timedelta(seconds=2)
        labels = {"tags": ["welcome", "a:b.c-d_e", "welcome"], "metadata": {"order": "42", "note": "héllo"}}
        scheduled = await post(svc, msg(1, send_at=iso(send_at), **labels))
        code, status = await get(svc, f"/api/messages/{scheduled}")
        assert code == 200 and status["state"] == "scheduled"
        assert [r["state"] for r in status["recipients"]] == ["scheduled"]
        assert status["tags"] == ["welcome", "a:b.c-d_e"] and status["metadata"] == {"order": "42", "note": "héllo"}
        assert datetime.fromisoformat(status["send_at"]) == send_at
        # A message queued after it goes first: the worker runs and claims, and passes the scheduled one over.
        now_id = await post(svc, msg(2))
        await wait_for(lambda: _received(handler, 1))
        before = time.time()
        if before < send_at.timestamp() - 0.3:  # a moment clearly before send_at
            assert [r.message["Subject"] for r in handler.received] == ["m2"]
            assert (await get(svc, f"/api/messages/{scheduled}"))[1]["state"] == "scheduled"
        await wait_for(lambda: _received(handler, 2))
        assert [r.message["Subject"] for r in handler.received] == ["m2", "m1"]
        assert handler.arrived[1] >= send_at.timestamp()  # never before its time, however slow the machine
        await svc.settle()
        assert (await get(svc, f"/api/messages/{scheduled}"))[1]["state"] == "delivered"
        assert (await get(svc, f"/api/messages/{now_id}"))[1]["send_at"] is None
        # A time in the past means now.
        past = await post(svc, msg(3, send_at="2001-01-01T00:00:00+05:00"))
        await wait_for(lambda: _received(handler, 3))
        assert (await get(svc, f"/api/messages/{past}"))[1]["state"] in ("sending", "delivered")


async def _received(handler: RecordingHandler, n: int) -> bool:
    return len(handler.received) >= n


async def test_cancel_before_send_at_sends_nothing_and_is_idempotent(
    smtp_port: int, handler: StampingHandler, tmp_path: Path, database_url: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **opts(database_url)) as svc:
        send_at = datetime.now(UTC) + timedelta(seconds=1.5)
        id_ = await post(svc, {**msg(1, send_at=iso(send_at)), "cc": "c@example.com"})
        answers = []
        for _ in range(2):
            r = await svc.client.delete(f"/api/messages/{id_}", headers=AUTH)
            answers.append((r.status_code, await r.get_json()))
        assert answers[0] == answers[1] or _same_but_times(answers)
        code, body = answers[0]
        assert code == 200 and body["state"] == "cancelled"
        assert [r["state"] for r in body["recipients"]] == ["cancelled", "cancelled"]
        # Past send_at, another message goes through: the worker ran after the cancelled one's time.
        while time.time() <= send_at.timestamp():
            await asyncio.sleep(0.05)
        await post(svc, msg(2))
        await wait_for(lambda: _received(handler, 1))
        await svc.settle()
        assert [r.message["Subject"] for r in handler.received] == ["m2"]
        assert (await get(svc, f"/api/messages/{id_}"))[1]["state"] == "cancelled"
        # Another tenant's id is unknown to it, for DELETE as for GET.
        r = await svc.client.delete(f"/api/messages/{id_}", headers=OTHER_AUTH)
        assert r.status_code == 404


def _same_but_times(answers: list[tuple[int, Any]]) -> bool:
    a, b = (json.dumps(body, sort_keys=True) for _, body in answers)
    return a == b


async def test_cancelling_a_batch_while_it_is_delivered(
    smtp_port: int, handler: StampingHandler, tmp_path: Path, database_url: str
) -> None:
    """200 recipients; cancel mid-way: after the cancel commits only what was then being sent arrives."""
    handler.stall_seconds = 0.005
    async with running(smtp_port, handler, tmp_path, **opts(database_url, max_batch=200)) as svc:
        body = {
            "subject": "b {{ n }}",
            "text": "x",
            "recipients": [{"to": f"r{i}@example.com", "context": {"n": i}} for i in range(200)],
        }
        r = await svc.client.post("/api/messages/bulk", json=body, headers=AUTH)
        assert r.status_code == 202
        batch = (await r.get_json())["batch_id"]
        await wait_for(lambda: _received(handler, 20))
        r = await svc.client.delete(f"/api/batches/{batch}", headers=AUTH)
        received_at_cancel = len(handler.received)
        counts = (await r.get_json())["counts"]
        assert r.status_code == (202 if counts.get("sending") else 200)
        assert set(counts) <= {"delivered", "sending", "cancelled"} and sum(counts.values()) == 200
        assert counts.get("cancelled", 0) > 0, "the batch finished before the cancel: make the sink slower"
        await svc.settle()
        # Nothing sent after the commit but what workers held then (each counted once at most).
        assert len(handler.received) - received_at_cancel <= counts.get("sending", 0)
        listed = await _all_pages(svc, f"/api/batches/{batch}/messages", limit=37)
        assert len(listed) == 200 and len({m["id"] for m in listed}) == 200
        states = {m["id"]: m["state"] for m in listed}
        assert set(states.values()) <= {"delivered", "cancelled"}
        delivered = {m["message_id"] for m in listed if m["state"] == "delivered"}
        got = [rec.message["Message-ID"] for rec in handler.received]
        assert len(got) == len(set(got)) and set(got) == delivered
        assert sum(1 for s in states.values() if s == "cancelled") >= counts["cancelled"]
        # The failed/cancelled filter, and a second DELETE answers the same.
        cancelled = await _all_pages(svc, f"/api/batches/{batch}/messages?status=cancelled")
        assert {m["id"] for m in cancelled} == {i for i, s in states.items() if s == "cancelled"}
        r2 = await svc.client.delete(f"/api/batches/{batch}", headers=AUTH)
        assert r2.status_code == 200 and (await r2.get_json())["counts"] == {
            s: n for s, n in (("delivered", len(delivered)), ("cancelled", 200 - len(delivered))) if n
        }
        for path in (f"/api/batches/{batch}/messages", f"/api/batches/{batch}"):
            assert (await get(svc, path, OTHER_AUTH))[0] == 404
        assert (await svc.client.delete(f"/api/batches/{batch}", headers=OTHER_AUTH)).status_code == 404


async def _all_pages(svc: Svc, path: str, limit: int = 50, auth: dict[str, str] = AUTH) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    sep = "&" if "?" in path else "?"
    url = f"{path}{sep}limit={limit}"
    while True:
        code, page = await get(svc, url, auth)
        assert code == 200, page
        out.extend(page["items"])
        if page["next"] is None:
            return out
        url = f"{path}{sep}limit={limit}&cursor={page['next']}"


async def test_listing_pages_under_concurrent_inserts(
    smtp_port: int, handler: StampingHandler, tmp_path: Path, database_url: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **opts(database_url, workers=0)) as svc:
        first = [await post(svc, msg(i, tags=["odd" if i % 2 else "even"])) for i in range(30)]
        theirs = await post(svc, msg(99, tags=["odd"]), OTHER_AUTH)
        seen: list[str] = []
        url = "/api/messages?limit=7"
        while True:
            code, page = await get(svc, url)
            assert code == 200
            seen.extend(m["id"] for m in page["items"])
            for i in range(3):  # inserted while paging: newer than every page still to come
                await post(svc, msg(100 + i))
            if page["next"] is None:
                break
            url = f"/api/messages?limit=7&cursor={page['next']}"
        listed_first = [i for i in seen if i in set(first)]
        assert sorted(listed_first) == sorted(first) and len(set(seen)) == len(seen)
        assert listed_first == first[::-1]  # newest first
        assert theirs not in seen
        # Filters, and a page window smaller than the history: pages may be empty but `next` goes on.
        assert isinstance(svc.outbox, OutboxCore)
        svc.outbox.scan_rows = 4
        odd = await _all_pages(svc, "/api/messages?tag=odd", limit=2)
        assert [m["id"] for m in odd] == [i for n, i in enumerate(first) if n % 2][::-1]
        assert all(m["tags"] == ["odd"] for m in odd)
        to = await _all_pages(svc, "/api/messages?to=r5@example.com&status=queued")
        assert [m["id"] for m in to] == [first[5]]
        code, page = await get(svc, "/api/messages?since=2999-01-01T00:00:00Z")
        assert code == 200 and page == {"items": [], "next": None}
        svc.outbox.scan_rows = 5000
        code, page = await get(svc, f"/api/messages?until={iso(datetime.now(UTC) + timedelta(days=1))}&limit=100")
        assert len(page["items"]) == 30 + 3 * 5
        assert [m["id"] for m in (await _all_pages(svc, "/api/messages", auth=OTHER_AUTH))] == [theirs]


HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"tags": ["x"] * 11}, "tags"),
    ({"tags": ["a" * 65]}, "tags"),
    ({"tags": ["a b"]}, "tags"),
    ({"tags": ["é"]}, "tags"),
    ({"tags": [1]}, "tags"),
    ({"tags": [["nested"]]}, "tags"),
    ({"tags": "solo"}, "tags"),
    ({"tags": ["x" * 100_000]}, "tags"),
    ({"metadata": {"k": {"nested": "v"}}}, "metadata"),
    ({"metadata": {"k": 1}}, "metadata"),
    ({"metadata": {"k": None}}, "metadata"),
    ({"metadata": ["k", "v"]}, "metadata"),
    ({"metadata": {f"k{i}": "v" for i in range(21)}}, "metadata"),
    ({"metadata": {"k": "v" * 101}}, "metadata"),
    ({"metadata": {"k": "v" * 1_000_000}}, "metadata"),
    ({"metadata": {"bad key": "v"}}, "metadata"),
    ({"metadata": {"k" * 41: "v"}}, "metadata"),
    ({"metadata": {"k": "line\nbreak"}}, "metadata"),
    ({"metadata": {"k": "nul\x00"}}, "metadata"),
    ({"send_at": "2030-01-01T00:00:00"}, "send_at"),  # naive
    ({"send_at": "2030-01-01"}, "send_at"),
    ({"send_at": "tomorrow"}, "send_at"),
    ({"send_at": "2030-02-30T00:00:00Z"}, "send_at"),
    ({"send_at": "2030-01-01T25:00:00Z"}, "send_at"),
    ({"send_at": 1893456000}, "send_at"),
    ({"send_at": ["2030-01-01T00:00:00Z"]}, "send_at"),
    ({"send_at": "2" * 100_000}, "send_at"),
    ({"send_at": iso(datetime.now(UTC) + timedelta(days=31))}, "send_at"),  # past the 30-day horizon
]
# Lone surrogates, as JSON escapes (json.dumps writes them so), in each field.
SURROGATES: list[tuple[dict[str, Any], str]] = [
    ({"tags": ["a\ud800"]}, "tags"),
    ({"metadata": {"k": "\udfff"}}, "metadata"),
    ({"metadata": {"\ud800": "v"}}, "metadata"),
    ({"send_at": "2030-01-01T00:00:00Z\ud800"}, "send_at"),
]


async def test_hostile_labels_are_422_naming_the_field(
    smtp_port: int, handler: StampingHandler, tmp_path: Path, database_url: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **opts(database_url, workers=0)) as svc:
        for extra, field in HOSTILE + SURROGATES:
            for path, body in (
                ("/api/messages", {**msg(1), **extra}),
                ("/api/messages/bulk", {"subject": "s", "text": "t", "recipients": [{"to": "a@example.com"}], **extra}),
            ):
                raw = json.dumps(body)
                r = await svc.client.post(path, data=raw, headers={**AUTH, "Content-Type": "application/json"})
                text = await r.get_data(as_text=True)
                assert r.status_code in (413, 422), (path, extra, text)
                fields = [e["field"] for e in json.loads(text).get("errors", [])]
                assert fields and all(f.startswith(field) for f in fields), (path, str(extra)[:80], fields)
        assert await svc.pending() == 0  # nothing half-queued


async def test_bad_listing_parameters_are_422_naming_them(
    smtp_port: int, handler: StampingHandler, tmp_path: Path, database_url: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **opts(database_url, workers=0)) as svc:
        id_ = await post(svc, msg(1))
        code, page = await get(svc, "/api/messages")
        batch = (
            await (
                await svc.client.post(
                    "/api/messages/bulk",
                    json={"subject": "s", "text": "t", "recipients": [{"to": "a@example.com"}]},
                    headers=AUTH,
                )
            ).get_json()
        )["batch_id"]
        assert code == 200 and [m["id"] for m in page["items"]] == [id_]
        for query, field in (
            ("status=bogus", "status"),
            ("status=queued&status=sending", "status"),
            ("tag=a%20b", "tag"),
            ("tag=" + "x" * 65, "tag"),
            ("since=2026-01-01T00:00:00", "since"),
            ("until=yesterday", "until"),
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=-1", "limit"),
            ("limit=1e3", "limit"),
            ("cursor=garbage!", "cursor"),
            ("cursor=WyJ4IiwieSJd", "cursor"),  # ["x","y"]: well-formed base64 JSON, not a cursor
            ("cursor=WyJUVFQiLCJhYmMiXQ", "cursor"),  # ["TTT","abc"]: passes the pattern, not a time
            ("to=a%00b", "to"),
            ("offset=3", "offset"),
        ):
            for path in ("/api/messages", f"/api/batches/{batch}/messages"):
                if field in ("tag", "since", "until", "to") and "batches" in path:
                    continue
                code, body = await get(svc, f"{path}?{query}")
                assert code == 422, (path, query, body)
                assert [e["field"] for e in body["errors"]] == [field], (path, query, body)
        for path in ("/api/batches/nope/messages", f"/api/messages/{id_}"):
            assert (await get(svc, path, OTHER_AUTH))[0] == 404
        assert (await get(svc, "/api/messages", OTHER_AUTH))[1] == {"items": [], "next": None}


async def test_the_listing_walks_an_index(database_url: str, tmp_path: Path) -> None:
    """The listing's query plans on both backends use the schedule migration's indexes, never a full scan."""
    from mailsvc.outbox import open_outbox

    outbox = open_outbox(database_url)
    await outbox.open()
    try:
        if database_url.startswith("sqlite"):
            db = outbox.store.db  # type: ignore[attr-defined]
            plans = {}
            for name, where in (
                ("tenant", "tenant = 't' AND (created_at, id) < (1.0, 'x')"),
                ("batch", "batch_id = 'b'"),
                ("admin", "(created_at, id) < (1.0, 'x')"),
            ):
                sql = f"EXPLAIN QUERY PLAN SELECT pk FROM messages WHERE {where} ORDER BY created_at DESC, id DESC"
                async with db.execute(sql) as cur:
                    plans[name] = " ".join(str(r[-1]) for r in await cur.fetchall())
            assert "messages_tenant_created" in plans["tenant"] and "TEMP B-TREE" not in plans["tenant"]
            assert "messages_batch_created" in plans["batch"] and "TEMP B-TREE" not in plans["batch"]
            assert "messages_created" in plans["admin"] and "TEMP B-TREE" not in plans["admin"]
        else:
            async with outbox.store.pool.acquire() as conn:  # type: ignore[attr-defined]
                await conn.execute("SET enable_seqscan = off")  # an empty table: ask which index it would use
                for name, where in (
                    ("mailsvc_message_tenant_created", "tenant = 't' AND (created_at, id) < (now(), 'x')"),
                    ("mailsvc_message_batch_created", "batch_id = 'b'"),
                    ("mailsvc_message_created", "(created_at, id) < (now(), 'x')"),
                ):
                    rows = await conn.fetch(
                        f"EXPLAIN SELECT id FROM mailsvc_message WHERE {where}"
                        " ORDER BY created_at DESC, id DESC LIMIT 5"
                    )
                    plan = "\n".join(r[0] for r in rows)
                    assert name in plan and "Sort" not in plan, plan
    finally:
        await outbox.close()
