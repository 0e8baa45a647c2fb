"""Asynchronous bounces (issue 15) through real parts, on SQLite and PostgreSQL.

The service sends through a real aiosmtpd relay; each test takes the MAIL FROM the relay saw (the
VERP return path), fills one of the reports in ``tests/fixtures/bounces/`` (as Postfix, Gmail and Exim
write bounces, and Yahoo an ARF complaint) with it, and sends it over SMTP with aiosmtplib to the bounce
listener running inside the app. Then the API shows the recipient ``bounced``/``complained`` and the
next bulk to the address is ``suppressed``. A report to any address the service did not mint (another
domain, an altered or forged token, a message it never sent) is refused at RCPT with a 5xx.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from pydantic import SecretStr, ValidationError

from mailsvc.config import ServiceConfig, WebConfig
from mailsvc.outbox import RecipientState, SqliteOutbox
from mailsvc.services import services
from mailsvc.verp import ReturnPath
from mailsvc.web.tenants import key_id
from tests.pgtools import fresh_schema
from tests.procs import free_port, stop_group
from tests.servers import RecordingHandler
from tests.webkit import AUTH, KEY, Svc, running

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"
DOMAIN = "bounce.example.com"
SECRET = "bounce-test-secret"
TENANT = key_id(KEY)


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    else:
        async with fresh_schema("bounces") as url:
            yield url


def bouncing(database_url: str, **service: Any) -> dict[str, Any]:
    """``running(...)`` arguments for a service with a bounce domain and its listener on an OS-chosen port."""
    return {
        "secret_key": SecretStr(SECRET),
        "service": {
            "database_url": database_url,
            "bounce_domain": DOMAIN,
            "bounce_listen": "127.0.0.1:0",
            **service,
        },
    }


def report(name: str, return_path: str, recipient: str, message_id: str = "<m@example.com>") -> bytes:
    """A fixture filled in, with the CRLF line ends it has on the wire."""
    text = (FIXTURES / name).read_text(encoding="utf-8")
    for key, value in (("{RETURN_PATH}", return_path), ("{RECIPIENT}", recipient), ("{MESSAGE_ID}", message_id)):
        text = text.replace(key, value)
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def listener_port(svc: Svc) -> int:
    server = services(svc.app).bounces
    assert server is not None and server.port
    return server.port


async def deliver_report(port: int, to: str, data: bytes) -> None:
    """What a reporting MTA does: MAIL FROM:<> (RFC 3464: a DSN has a null return path), RCPT the return path."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as smtp:
        await smtp.sendmail("", [to], data)


async def send_one(svc: Svc, to: str | list[str]) -> str:
    r = await svc.client.post("/api/messages", json={"to": to, "subject": "Hi", "text": "Hello"}, headers=AUTH)
    assert r.status_code == 202, await r.get_data(as_text=True)
    message_id: str = (await r.get_json())["id"]
    return message_id


async def status(svc: Svc, id_: str) -> dict[str, Any]:
    r = await svc.client.get(f"/api/messages/{id_}", headers=AUTH)
    assert r.status_code == 200
    body: dict[str, Any] = await r.get_json()
    return body


async def bulk_state(svc: Svc, address: str) -> str:
    """The state the next bulk message to ``address`` is stored in (and leaves it settled)."""
    body = {"subject": "News", "text": "Hi", "recipients": [{"to": address}]}
    r = await svc.client.post("/api/messages/bulk", json=body, headers=AUTH)
    assert r.status_code == 202, await r.get_data(as_text=True)
    await svc.settle()
    r = await svc.client.get(f"/api/batches/{(await r.get_json())['batch_id']}", headers=AUTH)
    counts: dict[str, int] = (await r.get_json())["counts"]
    assert sum(counts.values()) == 1
    return next(iter(counts))


async def sent_and_delivered(svc: Svc, handler: RecordingHandler, to: str) -> tuple[str, str]:
    """Queue a message to ``to``; the outbox id and the return path the relay saw."""
    id_ = await send_one(svc, to)
    await svc.settle()
    got = await svc.delivered(1)
    assert (await status(svc, id_))["state"] == "delivered"
    return id_, got[-1].mail_from


HARD = [
    ("postfix_dsn.eml", "dsn", "5.1.1 smtp; 550 5.1.1 <ann@example.com>: Recipient address rejected"),
    ("gmail_dsn.eml", "dsn", "5.1.1 smtp; 550-5.1.1 The email account that you tried to reach does not exist"),
    ("exim_bounce.eml", "text", "5.1.1 550 5.1.1 <ann@example.com>: Recipient address rejected: User unknown"),
]


@pytest.mark.parametrize(("fixture", "source", "reply"), HARD, ids=[h[0] for h in HARD])
async def test_a_hard_bounce_marks_the_recipient_bounced_and_the_next_bulk_suppressed(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, database_url: str, fixture: str, source: str, reply: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **bouncing(database_url)) as svc:
        id_, return_path = await sent_and_delivered(svc, handler, "ann@example.com")
        local, _, domain = return_path.partition("@")
        assert domain == DOMAIN and local.startswith("bounces+") and len(local) < 64
        assert local.isascii() and local.replace("+", "").isalnum()
        await deliver_report(listener_port(svc), return_path, report(fixture, return_path, "ann@example.com"))
        got = await status(svc, id_)
        assert got["state"] == "failed"  # its only recipient bounced
        [rcpt] = got["recipients"]
        assert rcpt["state"] == "bounced" and rcpt["last_code"] == 550
        assert rcpt["last_reply"].startswith(reply), rcpt["last_reply"]
        assert await bulk_state(svc, "Ann@Example.com") == "suppressed"
        assert len(handler.received) == 1  # the bulk reached no server
        rows = await svc.outbox.suppressions(TENANT)
    assert [(s.address, s.stream, s.reason, s.source) for s in rows] == [
        ("ann@example.com", "*", "hard_bounce", source)  # every stream, as a 5.1.1 at RCPT
    ]


async def test_an_arf_complaint_marks_the_recipient_complained_and_suppresses(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, database_url: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **bouncing(database_url)) as svc:
        id_, return_path = await sent_and_delivered(svc, handler, "ann@example.com")
        await deliver_report(listener_port(svc), return_path, report("yahoo_arf.eml", return_path, "ann@example.com"))
        got = await status(svc, id_)
        assert got["state"] == "delivered"  # a complaint means it arrived
        assert [r["state"] for r in got["recipients"]] == ["complained"]
        assert await bulk_state(svc, "ann@example.com") == "suppressed"
        rows = await svc.outbox.suppressions(TENANT)
    assert [(s.address, s.reason, s.source) for s in rows] == [("ann@example.com", "complaint", "arf")]


async def test_a_delay_notice_changes_nothing_and_an_expiry_bounces_without_suppressing(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, database_url: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **bouncing(database_url)) as svc:
        id_, return_path = await sent_and_delivered(svc, handler, "ann@example.com")
        port = listener_port(svc)
        await deliver_report(port, return_path, report("postfix_delayed.eml", return_path, "ann@example.com"))
        assert [r["state"] for r in (await status(svc, id_))["recipients"]] == ["delivered"]
        await deliver_report(port, return_path, report("postfix_expired.eml", return_path, "ann@example.com"))
        [rcpt] = (await status(svc, id_))["recipients"]
        assert (rcpt["state"], rcpt["last_code"]) == ("bounced", 452)
        assert rcpt["last_reply"].startswith("4.4.7 smtp; 452 4.2.2")
        assert await svc.outbox.suppressions(TENANT) == []
        assert await bulk_state(svc, "ann@example.com") == "delivered"


async def test_several_recipients_go_in_one_transaction_each_and_bounce_alone(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, database_url: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **bouncing(database_url)) as svc:
        id_ = await send_one(svc, ["ann@example.com", "bob@example.com"])
        await svc.settle()
        got = await svc.delivered(2)
        assert sorted(g.rcpt_tos[0] for g in got) == ["ann@example.com", "bob@example.com"]
        assert all(len(g.rcpt_tos) == 1 for g in got) and got[0].data == got[1].data  # same bytes
        by_rcpt = {g.rcpt_tos[0]: g.mail_from for g in got}
        assert len(set(by_rcpt.values())) == 2
        port = listener_port(svc)
        # bob's return path does not verify for ann: the token binds the recipient too
        bob_rp = by_rcpt["bob@example.com"]
        await deliver_report(port, bob_rp, report("postfix_dsn.eml", bob_rp, "bob@example.com"))
        body = await status(svc, id_)
        assert body["state"] == "partial"
        assert {r["recipient"]: r["state"] for r in body["recipients"]} == {
            "ann@example.com": "delivered",
            "bob@example.com": "bounced",
        }
        # a complaint may follow a bounce; a second copy of a report changes nothing
        await deliver_report(port, bob_rp, report("yahoo_arf.eml", bob_rp, "bob@example.com"))
        await deliver_report(port, bob_rp, report("postfix_dsn.eml", bob_rp, "bob@example.com"))
        body = await status(svc, id_)
        assert [r["state"] for r in body["recipients"]] == ["delivered", "complained"]
        assert body["state"] == "delivered"


async def test_a_recipient_refused_in_its_own_transaction_leaves_the_others_delivered(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, database_url: str
) -> None:
    handler.refuse["bob@example.com"] = "550 5.1.1 no such user"
    async with running(smtp_port, handler, tmp_path, **bouncing(database_url)) as svc:
        id_ = await send_one(svc, ["ann@example.com", "bob@example.com", "cy@example.com"])
        await svc.settle()
        body = await status(svc, id_)
    assert sorted(g.rcpt_tos[0] for g in handler.received) == ["ann@example.com", "cy@example.com"]
    assert body["state"] == "partial"
    assert [(r["recipient"], r["state"], r["last_code"]) for r in body["recipients"]] == [
        ("ann@example.com", "delivered", 250),
        ("bob@example.com", "failed", 550),
        ("cy@example.com", "delivered", 250),
    ]


def forgeries(return_path: str, other_message: str) -> list[str]:
    local, _, domain = return_path.partition("@")
    token = local.removeprefix("bounces+")
    flipped = token[:-1] + ("a" if token[-1] != "a" else "b")
    return [
        f"bounces+{flipped}@{domain}",  # altered MAC (or only the unused padding bits of the last letter)
        f"bounces+{token[:20]}{'a' if token[20] != 'a' else 'b'}{token[21:]}@{domain}",  # altered inside
        f"bounces+{token[:-2]}@{domain}",  # truncated
        f"bounces+{token}x@{domain}",  # lengthened
        f"bounces+{token}@other.example.com",  # another domain
        ReturnPath("another-secret", DOMAIN).address(other_message, "ann@example.com"),  # forged: wrong key
        ReturnPath(SECRET, DOMAIN).address("0" * 32, "ann@example.com"),  # a message we never sent
        f"postmaster@{DOMAIN}",
        "ann@example.com",  # relaying
        "bob@example.org",
    ]


async def test_forged_altered_unknown_and_foreign_addresses_are_refused_at_rcpt(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, database_url: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **bouncing(database_url)) as svc:
        id_, return_path = await sent_and_delivered(svc, handler, "ann@example.com")
        port = listener_port(svc)
        for address in forgeries(return_path, id_):
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                await deliver_report(port, address, report("postfix_dsn.eml", address, "ann@example.com"))
            [error] = refused.value.recipients
            assert 500 <= error.code < 600, (address, error)
        assert [r["state"] for r in (await status(svc, id_))["recipients"]] == ["delivered"]
        assert await svc.outbox.suppressions(TENANT) == []
        # the same token with its letters upper-cased (an MTA that folds case) still verifies
        local, _, domain = return_path.partition("@")
        shouted = f"{local.upper()}@{domain.upper()}"
        await deliver_report(port, shouted, report("postfix_dsn.eml", shouted, "ann@example.com"))
        assert [r["state"] for r in (await status(svc, id_))["recipients"]] == ["bounced"]


async def test_malformed_and_nested_reports_are_accepted_and_change_nothing(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    """What an attacker holding a real return path (every recipient sees theirs) can send: no 5xx loop, no 500."""
    db = f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    async with running(smtp_port, handler, tmp_path, **bouncing(db)) as svc:
        id_, return_path = await sent_and_delivered(svc, handler, "ann@example.com")
        port = listener_port(svc)
        nested = b"Content-Type: message/rfc822\r\n\r\n" * 20_000 + b"Subject: x\r\n\r\nhi\r\n"
        boundaries = b"".join(
            b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(3000)
        )
        no_from = b"Subject: hello\r\n\r\nnot a bounce\r\n"
        surrogates = report("postfix_dsn.eml", return_path, "ann@example.com").replace(
            b"Action: failed", b"Action: \xed\xa0\x80"
        )
        for data in (nested, boundaries, no_from, surrogates, b"\xff\xfe\x00"):
            await deliver_report(port, return_path, data)  # 250: raises otherwise
        assert [r["state"] for r in (await status(svc, id_))["recipients"]] == ["delivered"]
        assert await svc.outbox.suppressions(TENANT) == []


async def test_data_beyond_the_bound_is_refused_and_records_nothing(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    async with running(smtp_port, handler, tmp_path, **bouncing(db, bounce_max_bytes=4096)) as svc:
        id_, return_path = await sent_and_delivered(svc, handler, "ann@example.com")
        big = report("postfix_dsn.eml", return_path, "ann@example.com") + b"x" * 78 + (b"\r\n" + b"y" * 78) * 100
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await deliver_report(listener_port(svc), return_path, big)
        assert refused.value.code == 552
        assert [r["state"] for r in (await status(svc, id_))["recipients"]] == ["delivered"]


async def test_without_a_bounce_domain_the_sender_is_the_from_address(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    async with running(smtp_port, handler, tmp_path) as svc:
        await send_one(svc, ["ann@example.com", "bob@example.com"])
        await svc.settle()
        got = await svc.delivered(1)
    assert len(got) == 1 and got[0].rcpt_tos == ["ann@example.com", "bob@example.com"]
    assert not got[0].mail_from.startswith("bounces+")


def test_a_bounce_domain_needs_a_secret_key_and_the_listener_a_domain() -> None:
    with pytest.raises(ValidationError, match="MAILSVC_SECRET_KEY: MAILSVC_BOUNCE_DOMAIN is set"):
        ServiceConfig(bounce_domain=DOMAIN)
    with pytest.raises(ValidationError, match="MAILSVC_BOUNCE_LISTEN: set MAILSVC_BOUNCE_DOMAIN"):
        ServiceConfig(bounce_listen="127.0.0.1:2525")
    with pytest.raises(ValidationError, match="MAILSVC_BOUNCE_LISTEN: give host:port"):
        ServiceConfig(bounce_listen="127.0.0.1", bounce_domain=DOMAIN, web=WebConfig(secret_key=SecretStr("s")))
    with pytest.raises(ValidationError, match="MAILSVC_BOUNCE_DOMAIN: give a domain"):
        ServiceConfig(bounce_domain="not a domain", web=WebConfig(secret_key=SecretStr("s")))


def test_serve_refuses_to_start_with_a_bounce_domain_and_no_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "MAILSVC_"))}
    env.update(MAILSVC_BOUNCE_DOMAIN=DOMAIN, MAILSVC_DATABASE_URL=f"sqlite:///{tmp_path / 'o.sqlite3'}")
    proc = subprocess.run(
        [sys.executable, "-m", "mailsvc.cli", "serve"], cwd=tmp_path, env=env, capture_output=True, timeout=60
    )
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2
    assert lines[-1].startswith("mailsvc: configuration error: MAILSVC_SECRET_KEY: MAILSVC_BOUNCE_DOMAIN is set")


async def test_the_bounces_command_records_a_report_in_the_shared_outbox(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    """``mailsvc bounces --bind`` as a process of its own beside a service on the same database."""
    db = f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    args = bouncing(db)
    args["service"].pop("bounce_listen")
    async with running(smtp_port, handler, tmp_path, **args) as svc:
        id_, return_path = await sent_and_delivered(svc, handler, "ann@example.com")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "MAILSVC_"))}
    env.update(MAILSVC_BOUNCE_DOMAIN=DOMAIN, MAILSVC_SECRET_KEY=SECRET, MAILSVC_DATABASE_URL=db, MAIL_SERVER="x")
    env.update(MAIL_DEFAULT_SENDER="shop@example.com", MAILSVC_API_KEYS=KEY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailsvc.cli", "bounces", "--bind", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline().decode() for _ in range(1)]
        while "listening on" not in lines[-1] and lines[-1] and len(lines) < 50:  # log lines come first
            lines.append(proc.stderr.readline().decode())
        assert f"mailsvc bounces: listening on 127.0.0.1:{port}" in lines[-1], lines
        await deliver_report(port, return_path, report("gmail_dsn.eml", return_path, "ann@example.com"))
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await deliver_report(port, "ann@example.com", b"Subject: relay me\r\n\r\nhi\r\n")
    finally:
        stop_group(proc)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == 0
    async with SqliteOutbox(tmp_path / "outbox.sqlite3") as outbox:
        got = await outbox.status(id_)
    assert [r.state for r in got.recipients] == [RecipientState.BOUNCED]


def test_a_token_whose_unused_padding_bits_differ_is_refused() -> None:
    """26 bytes are 42 base32 letters with 2 unused bits at the end: only the canonical spelling verifies."""
    rp = ReturnPath(SECRET, DOMAIN)
    address = rp.address("ab" * 16, "ann@example.com")
    local, _, domain = address.partition("@")
    last = local[-1]
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    twin = alphabet[alphabet.index(last) ^ 1]  # same 3 data bits, a padding bit set
    claim = rp.parse(address)
    assert claim is not None and rp.matches(claim, "ann@example.com")
    assert rp.parse(f"{local[:-1]}{twin}@{domain}") is None
