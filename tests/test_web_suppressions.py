"""``/api/suppressions`` through the real app on SQLite and PostgreSQL: per tenant, scoped, validated.

And a single message (``POST /api/messages``, the form's route) to a suppressed address: accepted,
its recipient ``suppressed`` with the reason, nothing sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.pgtools import fresh_schema
from tests.servers import RecordingHandler
from tests.webkit import KEY, running

TENANTS = {
    "shop": {"keys": ["shop-key", {"key": "shop-reader", "scopes": ["read"]}]},
    "globex": {"keys": ["globex-key"]},
    "ops": {"keys": [{"key": "ops-key", "scopes": ["admin"]}]},
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    else:
        async with fresh_schema("supp") as url:
            yield url


def service(tmp_path: Path, database_url: str, workers: int = 0) -> dict[str, Any]:
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps(TENANTS), encoding="utf-8")
    return dict(
        workers=workers,
        api_keys=(SecretStr(KEY),),
        api_keys_file=path,
        secret_key=SecretStr("s"),
        service={"database_url": database_url},
    )


async def test_add_list_and_remove_per_tenant(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, database_url: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **service(tmp_path, database_url)) as svc:
        c = svc.client
        r = await c.post(
            "/api/suppressions",
            json={"addresses": ["Ann <ANN@Example.com>", "bob@example.com"]},
            headers=bearer("shop-key"),
        )
        assert r.status_code == 200, await r.get_data(as_text=True)
        assert await r.get_json() == {
            "added": 2,
            "addresses": ["ann@example.com", "bob@example.com"],
            "stream": "*",
            "reason": "manual",
        }
        r = await c.post(
            "/api/suppressions",
            json={"addresses": ["ann@example.com"], "reason": "unsubscribe", "stream": "news"},
            headers=bearer("shop-key"),
        )
        assert (await r.get_json())["stream"] == "news"
        # An unsubscribe without a stream holds for the default stream only.
        r = await c.post(
            "/api/suppressions",
            json={"addresses": ["cy@example.com"], "reason": "unsubscribe"},
            headers=bearer("shop-key"),
        )
        assert (await r.get_json())["stream"] == "default"

        r = await c.get("/api/suppressions?limit=2", headers=bearer("shop-reader"))
        page = await r.get_json()
        assert [(s["stream"], s["address"]) for s in page["suppressions"]] == [
            ("*", "ann@example.com"),
            ("*", "bob@example.com"),
        ]
        assert page["suppressions"][0]["source"].startswith("api:")  # the key's id, never the key
        assert "shop-key" not in page["suppressions"][0]["source"]
        r = await c.get(
            "/api/suppressions", query_string={"limit": 2, "cursor": page["next"]}, headers=bearer("shop-key")
        )
        page2 = await r.get_json()
        assert [(s["stream"], s["address"]) for s in page2["suppressions"]] == [
            ("default", "cy@example.com"),
            ("news", "ann@example.com"),
        ]
        assert page2["next"] is None
        r = await c.get("/api/suppressions?reason=unsubscribe&stream=news", headers=bearer("shop-key"))
        assert [s["address"] for s in (await r.get_json())["suppressions"]] == ["ann@example.com"]
        r = await c.get("/api/suppressions?address=ANN%40example.com", headers=bearer("shop-key"))
        assert [s["stream"] for s in (await r.get_json())["suppressions"]] == ["*", "news"]

        # Another tenant (even an admin key) sees none of it and cannot remove it.
        for key in ("globex-key", "ops-key"):
            r = await c.get("/api/suppressions", headers=bearer(key))
            assert await r.get_json() == {"suppressions": [], "next": None}
            r = await c.delete("/api/suppressions/ann@example.com", headers=bearer(key))
            assert r.status_code == 404
        # A read-only key may list, not change.
        r = await c.delete("/api/suppressions/ann@example.com", headers=bearer("shop-reader"))
        assert r.status_code == 403
        r = await c.post("/api/suppressions", json={"addresses": ["x@example.com"]}, headers=bearer("shop-reader"))
        assert r.status_code == 403

        r = await c.delete("/api/suppressions/Ann@Example.com?stream=news", headers=bearer("shop-key"))
        assert r.status_code == 204
        r = await c.delete("/api/suppressions/Ann@Example.com?stream=news", headers=bearer("shop-key"))
        assert r.status_code == 404  # a retry: nothing left there
        r = await c.delete("/api/suppressions/ann@example.com", headers=bearer("shop-key"))
        assert r.status_code == 204
        r = await c.get("/api/suppressions?address=ann@example.com", headers=bearer("shop-key"))
        assert (await r.get_json())["suppressions"] == []


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/api/suppressions", {"addresses": []}, "addresses"),
        ("POST", "/api/suppressions", {"addresses": ["not an address"]}, "addresses[0]"),
        ("POST", "/api/suppressions", {"addresses": ["a@example.com\r\nBcc: x@example.com"]}, "addresses[0]"),
        ("POST", "/api/suppressions", {"addresses": ["a@example.com"], "reason": "spam"}, "reason"),
        ("POST", "/api/suppressions", {"addresses": ["a@example.com"], "stream": "*"}, "stream"),
        ("POST", "/api/suppressions", {"addresses": ["a@example.com"] * 1001}, "addresses"),
        ("POST", "/api/suppressions", {"addresses": ["a@example.com"], "tenant": "globex"}, "tenant"),
        ("POST", "/api/suppressions", {"addresses": ["\ud800@example.com"]}, "addresses[0]"),
        ("GET", "/api/suppressions?limit=0", None, "limit"),
        ("GET", "/api/suppressions?limit=501", None, "limit"),
        ("GET", "/api/suppressions?limit=x", None, "limit"),
        ("GET", "/api/suppressions?reason=spam", None, "reason"),
        ("GET", "/api/suppressions?stream=a%20b", None, "stream"),
        ("GET", "/api/suppressions?cursor=nocolon", None, "cursor"),
        ("GET", "/api/suppressions?address=nobody", None, "address"),
        ("GET", "/api/suppressions?tenant=globex", None, "tenant"),
        ("DELETE", "/api/suppressions/nobody", None, "address"),
        ("DELETE", "/api/suppressions/" + "a" * 2000 + "@example.com", None, "address"),
        ("DELETE", "/api/suppressions/a@example.com?stream=a%20b", None, "stream"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, method: str, path: str, body: Any, field: str
) -> None:
    url = f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    async with running(smtp_port, handler, tmp_path, **service(tmp_path, url)) as svc:
        kwargs: dict[str, Any] = {"headers": bearer("shop-key")}
        if body is not None:
            kwargs["data"] = json.dumps(body)
            kwargs["headers"]["Content-Type"] = "application/json"
        r = await svc.client.open(path, method=method, **kwargs)
        problem = await r.get_json()
        assert r.status_code == 422, problem
        assert field in [e["field"] for e in problem["errors"]], problem
        assert await svc.outbox.suppressions("shop") == []


async def test_a_single_message_to_a_suppressed_address_is_accepted_and_never_sent(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, database_url: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **service(tmp_path, database_url, workers=1)) as svc:
        c = svc.client
        r = await c.post(
            "/api/suppressions",
            json={"addresses": ["ann@example.com"], "reason": "complaint"},
            headers=bearer("shop-key"),
        )
        assert r.status_code == 200
        only = await c.post(
            "/api/messages", json={"to": "Ann@example.com", "subject": "s", "text": "t"}, headers=bearer("shop-key")
        )
        assert only.status_code == 202
        both = await c.post(
            "/api/messages",
            json={"to": ["ann@example.com", "bob@example.com"], "subject": "s", "text": "t", "stream": "receipts"},
            headers=bearer("shop-key"),
        )
        other = await c.post(
            "/api/messages", json={"to": "ann@example.com", "subject": "s", "text": "t"}, headers=bearer("globex-key")
        )
        await svc.settle()
        await svc.delivered(2)
        r = await c.get(only.headers["Location"], headers=bearer("shop-key"))
        status = await r.get_json()
        assert status["state"] == "suppressed"
        assert [(x["state"], x["last_reply"]) for x in status["recipients"]] == [
            ("suppressed", "suppressed: complaint")
        ]
        r = await c.get(both.headers["Location"], headers=bearer("shop-key"))
        assert {x["recipient"]: x["state"] for x in (await r.get_json())["recipients"]} == {
            "ann@example.com": "suppressed",
            "bob@example.com": "delivered",
        }
        r = await c.get(other.headers["Location"], headers=bearer("globex-key"))
        assert (await r.get_json())["state"] == "delivered"  # globex's mail is not shop's list's business
    assert sorted(a for g in handler.received for a in g.rcpt_tos) == ["ann@example.com", "bob@example.com"]
