"""Tenants through the real app, on both outboxes: isolation, scopes, per-tenant limits, sign-in hardening.

Issue 13, finding 10: any valid key read any message's and batch's status, failed Bearer
attempts were never limited, and a session cookie saved before sign-out still sent mail.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from quart.typing import TestClientProtocol as Client

from mailsvc.app import create_app
from mailsvc.config import MailConfig
from mailsvc.errors import ConfigError, IdempotencyConflictError
from mailsvc.message import Message
from mailsvc.web.tenants import key_id
from tests.pgtools import fresh_schema
from tests.servers import RecordingHandler
from tests.webkit import KEY, Svc, hidden, running, service_config

TENANTS = {
    "shop": {
        "keys": [
            "shop-key-2024",
            "shop-key-2025",  # rotation: both work, both see the shop's mail
            {"key": "shop-reader", "scopes": ["read"]},
            {"key": "shop-sender", "scopes": ["send"]},
        ]
    },
    "globex": {"keys": ["globex-key"]},
    "ops": {"keys": [{"key": "ops-key", "scopes": ["admin"]}]},
}
SECRET = SecretStr("the same on every node")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def message(subject: str = "s") -> dict[str, Any]:
    return {"to": "a@example.com", "subject": subject, "text": "t"}


def bulk() -> dict[str, Any]:
    return {"subject": "b", "text": "t", "recipients": [{"to": "b1@example.com"}, {"to": "b2@example.com"}]}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps(TENANTS), encoding="utf-8")
    return path


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    else:
        async with fresh_schema("ten") as url:
            yield url


def tenant_service(keys_file: Path, database_url: str, **web: Any) -> dict[str, Any]:
    """``running(...)`` arguments: the env key (a tenant of its own) and the tenants file, on ``database_url``."""
    return dict(
        workers=0,
        api_keys=(SecretStr(KEY),),
        api_keys_file=keys_file,
        secret_key=SECRET,
        service={"database_url": database_url},
        **web,
    )


async def accepted(client: Client, path: str, key: str, body: dict[str, Any], **headers: str) -> str:
    r = await client.post(path, json=body, headers={**bearer(key), **headers})
    assert r.status_code == 202, await r.get_data(as_text=True)
    return str(r.headers["Location"])


async def test_another_tenant_s_ids_answer_as_unknown_ones(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, keys_file: Path, database_url: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **tenant_service(keys_file, database_url)) as svc:
        c = svc.client
        shop = [
            await accepted(c, "/api/messages", "shop-key-2024", message()),
            await accepted(c, "/api/messages/bulk", "shop-key-2024", bulk()),
        ]
        globex = [
            await accepted(c, "/api/messages", "globex-key", message()),
            await accepted(c, "/api/messages/bulk", "globex-key", bulk()),
        ]
        own_key = [await accepted(c, "/api/messages", KEY, message())]  # MAILSVC_API_KEYS: a tenant of its own
        # Every route that takes an id: GET /api/messages/<id> and GET /api/batches/<id>.
        assert {p.split("/")[2] for p in shop + globex} == {"messages", "batches"}

        async def status(path: str, key: str) -> tuple[int, Any]:
            r = await c.get(path, headers=bearer(key))
            return r.status_code, await r.get_json()

        for key, mine, theirs in (
            ("shop-key-2025", shop, globex + own_key),
            ("shop-reader", shop, globex + own_key),
            ("globex-key", globex, shop + own_key),
            (KEY, own_key, shop + globex),
        ):
            for path in mine:
                assert (await status(path, key))[0] == 200, (key, path)
            for path in theirs:
                unknown = path.rsplit("/", 1)[0] + "/" + "0" * 32
                code, body = await status(path, key)
                code_unknown, body_unknown = await status(unknown, key)
                # Exactly as an unknown id: the same status and the same body (but for the id it names).
                assert (code, code_unknown) == (404, 404), (key, path)
                assert json.dumps(body).replace(path.rsplit("/", 1)[1], "0" * 32) == json.dumps(body_unknown)
        for path in shop + globex + own_key:  # admin sees every tenant's
            assert (await status(path, "ops-key"))[0] == 200, path
        assert await svc.pending() == 7


async def test_idempotency_keys_are_scoped_per_tenant(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, keys_file: Path, database_url: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **tenant_service(keys_file, database_url)) as svc:
        first = await accepted(svc.client, "/api/messages", "shop-key-2024", message("a"), **{"Idempotency-Key": "k1"})
        # Another key of the same tenant replays it: the same request, whichever key the tenant rotated to.
        r = await svc.client.post(
            "/api/messages", json=message("a"), headers={**bearer("shop-key-2025"), "Idempotency-Key": "k1"}
        )
        assert r.status_code == 202 and r.headers["Location"] == first and r.headers["Idempotent-Replayed"] == "true"
        # Another tenant's same key is another request (no conflict, no replay of the shop's message).
        other = await accepted(svc.client, "/api/messages", "globex-key", message("b"), **{"Idempotency-Key": "k1"})
        assert other != first
        assert await svc.pending() == 2


async def test_a_key_s_scopes_are_enforced(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, keys_file: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    async with running(smtp_port, handler, tmp_path, **tenant_service(keys_file, url)) as svc:
        for path, body in (("/api/messages", message()), ("/api/messages/bulk", bulk())):
            r = await svc.client.post(path, json=body, headers=bearer("shop-reader"))
            assert r.status_code == 403 and "'send' scope" in (await r.get_json())["detail"], path
        assert await svc.pending() == 0
        location = await accepted(svc.client, "/api/messages", "shop-sender", message())
        batch = await accepted(svc.client, "/api/messages/bulk", "shop-sender", bulk())
        for path in (location, batch):
            r = await svc.client.get(path, headers=bearer("shop-sender"))
            assert r.status_code == 403 and "'read' scope" in (await r.get_json())["detail"], path
            assert (await svc.client.get(path, headers=bearer("shop-reader"))).status_code == 200
        # The form: a key that may only read signs in, and may not send.
        fields = await sign_in(svc, "shop-reader")
        r = await svc.client.post("/", form={**fields, "email": "a@example.com", "subject": "s", "message": "m"})
        assert r.status_code == 403 and "&#39;send&#39; scope" in await r.get_data(as_text=True)
        assert await svc.pending() == 3


async def test_rate_limits_are_per_tenant(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, keys_file: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    limits = tenant_service(keys_file, url, rate_limit=0.001, rate_burst=2)
    async with running(smtp_port, handler, tmp_path, **limits) as svc:
        await accepted(svc.client, "/api/messages", "shop-key-2024", message())
        await accepted(svc.client, "/api/messages", "shop-key-2025", message())
        r = await svc.client.post("/api/messages", json=message(), headers=bearer("shop-sender"))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1  # a third key of the same tenant
        await accepted(svc.client, "/api/messages", "globex-key", message())  # another tenant: its own bucket
        assert await svc.pending() == 3


async def test_form_user_acts_as_the_tenant_of_its_key(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, keys_file: Path, database_url: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **tenant_service(keys_file, database_url)) as svc:
        shop = await accepted(svc.client, "/api/messages", "shop-key-2024", message())
        fields = await sign_in(svc, "globex-key")
        r = await svc.client.post("/", form={**fields, "email": "a@example.com", "subject": "s", "message": "m"})
        assert r.status_code == 200
        [sent] = [line for line in (await r.get_data(as_text=True)).split('"') if line.startswith("/api/messages/")]
        assert (await svc.client.get(sent)).status_code == 200  # the session reads its tenant's mail
        assert (await svc.client.get(shop)).status_code == 404  # not another's
        assert (await svc.client.get(sent, headers=bearer("globex-key"))).status_code == 200
        assert (await svc.client.get(sent, headers=bearer("shop-key-2024"))).status_code == 404


# -- sign-in hardening -------------------------------------------------------------------------


async def sign_in(svc: Svc, key: str, client: Client | None = None) -> dict[str, str]:
    """Sign in with ``key``; the form's hidden fields."""
    c = client or svc.client
    page = await (await c.get("/signin")).get_data(as_text=True)
    r = await c.post("/signin", form={"csrf_token": hidden(page, "csrf_token"), "key": key, "next": "/"})
    assert r.status_code == 302, await r.get_data(as_text=True)
    page = await (await c.get("/")).get_data(as_text=True)
    return {"csrf_token": hidden(page, "csrf_token"), "nonce": hidden(page, "nonce")}


def session_cookie(client: Client) -> str:
    assert client.cookie_jar is not None
    return next(c.value for c in client.cookie_jar if c.name == "mailsvc_session" and c.value is not None)


async def test_a_cookie_saved_before_sign_out_is_refused_after_on_every_node(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, keys_file: Path, database_url: str
) -> None:
    config = tenant_service(keys_file, database_url)
    async with (
        running(smtp_port, handler, tmp_path, **config) as node_a,
        running(smtp_port, handler, tmp_path, **config) as node_b,
    ):
        fields = await sign_in(node_a, "shop-key-2024")
        form = {**fields, "email": "a@example.com", "subject": "s", "message": "m"}
        r = await node_a.client.post("/", form=form)
        assert r.status_code == 200
        [status_url] = [s for s in (await r.get_data(as_text=True)).split('"') if s.startswith("/api/messages/")]
        saved = session_cookie(node_a.client)
        replay = {"Cookie": f"mailsvc_session={saved}"}
        attacker = node_b.app.test_client()
        # Before sign-out the copy works on the other node as well.
        assert (await attacker.get(status_url, headers=replay)).status_code == 200

        r = await node_a.client.post("/signout", form={"csrf_token": fields["csrf_token"]})
        assert r.status_code == 302
        for node in (node_a, node_b):
            attacker = node.app.test_client()
            r = await attacker.post("/", form={**form, "nonce": "another"}, headers=replay)
            assert r.status_code == 302 and r.headers["Location"].startswith("/signin")  # sends nothing
            assert (await attacker.get("/", headers=replay)).status_code == 302
            assert (await attacker.get(status_url, headers=replay)).status_code == 401
        assert await node_a.pending() == 1

        # Signing in again gives a new session, which works.
        await sign_in(node_a, "shop-key-2024")
        assert (await node_a.client.get(status_url)).status_code == 200


async def test_300_guessed_keys_get_429s(
    smtp_port: int,
    handler: RecordingHandler,
    tmp_path: Path,
    keys_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    with caplog.at_level(logging.INFO, logger="mailsvc"):
        async with running(smtp_port, handler, tmp_path, **tenant_service(keys_file, url)) as svc:
            guesser = {"client": ("203.0.113.5", 1111)}
            codes = []
            for i in range(300):
                r = await svc.client.post(
                    "/api/messages", json=message(), headers=bearer(f"guess-{i:03d}"), scope_base=guesser
                )
                codes.append(r.status_code)
                if r.status_code == 429:
                    assert 1 <= int(r.headers["Retry-After"]) <= 60
            assert codes[:10] == [401] * 10 and codes[10:] == [429] * 290
            # While the address is refused, even a right key is (a guesser must not learn which guess was right),
            r = await svc.client.post(
                "/api/messages", json=message(), headers=bearer("shop-key-2024"), scope_base=guesser
            )
            assert r.status_code == 429
            # and /readyz does not tell it either; another address is not affected.
            readyz = await svc.client.get("/readyz", headers=bearer("ops-key"), scope_base=guesser)
            assert "pending" not in await readyz.get_json()
            assert "pending" in await (await svc.client.get("/readyz", headers=bearer("ops-key"))).get_json()
            r = await svc.client.post("/api/messages", json=message(), headers=bearer("shop-key-2024"))
            assert r.status_code == 202
            assert await svc.pending() == 1

            # Sign-in guesses are counted the same way (a fresh address: the form's own page and token).
            guesser = {"client": ("198.51.100.9", 1234)}
            page = await (await svc.client.get("/signin", scope_base=guesser)).get_data(as_text=True)
            token = hidden(page, "csrf_token")
            codes = []
            for i in range(300):
                r = await svc.client.post(
                    "/signin", form={"csrf_token": token, "key": f"guess-{i}", "next": "/"}, scope_base=guesser
                )
                codes.append(r.status_code)
            assert codes[:10] == [401] * 10 and codes[10:] == [429] * 290 and "Retry-After" in r.headers
            r = await svc.client.post(
                "/signin", form={"csrf_token": token, "key": "shop-key-2024", "next": "/"}, scope_base=guesser
            )
            assert r.status_code == 429
    logged = caplog.text
    assert "guess-" not in logged and "shop-key-2024" not in logged
    assert "refused an invalid API key from 203.0.113.5" in logged
    assert "too many failed API keys or sign-ins from 203.0.113.5" in logged
    assert "too many failed API keys or sign-ins from 198.51.100.9" in logged


async def test_existing_keys_keep_working_and_keep_their_idempotency_scope(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    """MAILSVC_API_KEYS alone: each key a tenant named by its key id (the scope idempotency keys always had)."""
    async with running(smtp_port, handler, tmp_path, workers=0, api_keys=(SecretStr(KEY), SecretStr("k2"))) as svc:
        first = await accepted(svc.client, "/api/messages", KEY, message(), **{"Idempotency-Key": "x"})
        id_ = first.rsplit("/", 1)[1]
        assert (await svc.outbox.status(id_, tenant=key_id(KEY))).state == "queued"
        assert (await svc.client.get(first, headers=bearer("k2"))).status_code == 404
        # Held under "<key id>:<key>", as before tenants: keys a client sent before the upgrade still replay.
        with pytest.raises(IdempotencyConflictError):
            await svc.outbox.enqueue(
                [Message("x", ["a@example.com"], body="x", sender="s@example.com").build()],
                idempotency_key=f"{key_id(KEY)}:x",
                fingerprint="another request",
            )


# -- the keys file -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, where",
    [
        ("{not json", "is not JSON at line 1 column 2"),
        ("[]", "the top level: Input should be a valid dictionary"),
        ("{}", "names no tenants"),
        ('{"shop": {"keys": []}}', "shop.keys: List should have at least 1 item"),
        ('{"shop": {"key": ["secret-1"]}}', "shop.keys: Field required"),
        ('{"shop": {"keys": ["secret 1"]}}', "shop.keys.0.key: String should match pattern"),
        ('{"shop": {"keys": [{"key": "secret-1", "scopes": ["root"]}]}}', "shop.keys.0.scopes.0: Input should be"),
        ('{"shop": {"keys": [{"key": "secret-1", "scopes": []}]}}', "shop.keys.0.scopes: "),
        ('{"sh/op": {"keys": ["secret-1"]}}', "sh/op.[key]: String should match pattern"),
        ('{"a": {"keys": ["secret-1"]}, "b": {"keys": ["secret-1"]}}', "is listed twice (tenants 'a' and 'b')"),
        (json.dumps({key_id(KEY): {"keys": ["secret-1"]}}), f"tenant '{key_id(KEY)}' is also the key id"),
    ],
)
def test_a_bad_keys_file_refuses_to_start_naming_the_setting(tmp_path: Path, content: str, where: str) -> None:
    path = tmp_path / "tenants.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        create_app(MailConfig(server="smtp.example.com"), service_config(tmp_path, api_keys_file=path))
    assert err.value.setting == "MAILSVC_API_KEYS_FILE" and where in str(err.value), str(err.value)
    assert "secret" not in str(err.value)  # never the key itself


def test_a_missing_keys_file_or_a_key_twice_in_the_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        create_app(MailConfig(server="smtp.example.com"), service_config(tmp_path, api_keys_file=tmp_path / "none"))
    assert err.value.setting == "MAILSVC_API_KEYS_FILE" and "cannot read" in str(err.value)
    twice = (SecretStr("secret-1"), SecretStr("secret-1"))
    with pytest.raises(ConfigError) as err:
        create_app(MailConfig(server="smtp.example.com"), service_config(tmp_path, api_keys=twice))
    assert err.value.setting == "MAILSVC_API_KEYS" and "listed twice" in str(err.value)
    assert "secret-1" not in str(err.value)


def test_a_keys_file_alone_is_not_an_open_relay(tmp_path: Path, keys_file: Path) -> None:
    create_app(MailConfig(server="smtp.example.com"), service_config(tmp_path, api_keys=(), api_keys_file=keys_file))
