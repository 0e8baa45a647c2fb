"""DKIM: dkimpy's own ``verify`` accepts every message the library, the bulk API and the worker send.

The DNS answer is the TXT record ``mailsvc dkim keygen`` prints, served by a dnsfunc;
messages are checked as the SMTP server (aiosmtpd) received them, so nothing between
the build and the wire may touch a signed byte. Both key types, every path.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dkim
import pytest
from aiosmtpd.smtp import Envelope as SMTPEnvelope
from aiosmtpd.smtp import Session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsvc import Attachment, MailConfig, Message
from mailsvc.app import create_app
from mailsvc.commands import dkim as dkim_command
from mailsvc.dkimsign import Algorithm, Keyring, load_key
from mailsvc.envelopes import build_envelope
from mailsvc.errors import ConfigError
from tests.helpers import config, standalone
from tests.servers import RecordingHandler, smtp_server
from tests.webkit import AUTH, service_config

DOMAIN, SELECTOR = "example.com", "s1"
ALGORITHMS: list[Algorithm] = ["rsa", "ed25519"]


def keygen(tmp_path: Path, algorithm: Algorithm, domain: str = DOMAIN, selector: str = SELECTOR) -> tuple[Path, str]:
    """Run ``mailsvc dkim keygen`` as a user would; return the key file and the TXT record it printed."""
    args = argparse.Namespace(
        dkim_action="keygen", domain=domain, selector=selector, algorithm=algorithm, out=tmp_path / "keys"
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert dkim_command.run(args) == 0
    line = next(ln for ln in out.getvalue().splitlines() if " IN TXT " in ln)
    assert line.startswith(f"{selector}._domainkey.{domain}. IN TXT ")
    record = "".join(re.findall(r'"([^"]*)"', line))
    return tmp_path / "keys" / f"{selector}.{domain}.pem", record


def dnsfunc(records: dict[str, str]) -> Callable[..., bytes | None]:
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        record = records.get(name.decode().rstrip("."))
        return record.encode() if record is not None else None

    return lookup


@pytest.fixture(params=ALGORITHMS)
def signed(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[dict[str, Any], Callable[..., bytes | None]]:
    """MailConfig fields for a fresh key, and the DNS that publishes it."""
    key, record = keygen(tmp_path, request.param)
    fields = {"dkim_domain": DOMAIN, "dkim_selector": SELECTOR, "dkim_key_file": key}
    return fields, dnsfunc({f"{SELECTOR}._domainkey.{DOMAIN}": record})


def verifies(data: bytes, dns: Callable[..., bytes | None]) -> bool:
    return bool(dkim.verify(data, dnsfunc=dns))


def signature_tags(data: bytes) -> dict[str, str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    value = re.search(r"^DKIM-Signature:(.*?)\r\n(?! )", head, re.S | re.M)
    assert value, "no DKIM-Signature header"
    flat = re.sub(r"\s+", "", value.group(1))
    return dict(t.split("=", 1) for t in flat.split(";") if t)


def tricky_messages() -> list[Message]:
    """Non-ASCII subjects and display names, an attachment, HTML, Cc, unsubscribe headers."""
    return [
        Message("Grüße aus Köln — 日本語の件名", recipients=[("Zoë Ünïcode", "ann@example.org")], body="Hallo"),
        Message(
            "Report",
            recipients=["bob@example.org"],
            cc=["cy@example.org"],
            body="see attached\n",
            html="<p>see <b>attached</b></p>",
            attachments=[Attachment("rapport-été.pdf", "application/pdf", b"%PDF-1.4\n" + bytes(range(256)) * 40)],
            extra_headers={
                "List-Unsubscribe": "<https://example.com/unsubscribe/t0k3n>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        ),
        Message("long body", recipients=["dee@example.org"], body="x " * 5000 + "\n\n\ntrailing blank lines\n\n\n"),
    ]


def test_built_messages_verify_and_sign_the_headers_receivers_check(signed: Any) -> None:
    fields, dns = signed
    cfg = MailConfig(default_sender=("Zoë's Shop", "shop@example.com"), **fields)
    for msg in tricky_messages():
        data = build_envelope(msg, cfg).data
        assert verifies(data, dns), data[:600]
        tags = signature_tags(data)
        assert tags["c"] == "relaxed/relaxed" and tags["d"] == DOMAIN and tags["s"] == SELECTOR
        assert tags["a"] == ("rsa-sha256" if "BEGIN RSA" in fields["dkim_key_file"].read_text() else "ed25519-sha256")
        signed_headers = tags["h"].split(":")
        assert signed_headers.count("from") == 2  # oversigned: a second From cannot be added
        for name in ("to", "subject", "date", "message-id", "mime-version", "content-type"):
            assert name in signed_headers
    report = signature_tags(build_envelope(tricky_messages()[1], cfg).data)["h"].split(":")
    assert {"cc", "list-unsubscribe", "list-unsubscribe-post"} <= set(report)


def test_a_message_altered_after_signing_fails(signed: Any) -> None:
    fields, dns = signed
    data = build_envelope(tricky_messages()[1], config(25, **fields)).data
    assert verifies(data, dns)
    head, body = data.split(b"\r\n\r\n", 1)
    assert not verifies(head + b"\r\n\r\n" + body.replace(b"attached", b"atached", 1), dns)  # body
    assert not verifies(head.replace(b"Subject: Report", b"Subject: Rep0rt") + b"\r\n\r\n" + body, dns)
    assert not verifies(b"From: mallory@example.net\r\n" + data, dns)  # the oversigned From
    other, record = keygen(Path(str(fields["dkim_key_file"]) + ".d"), "rsa")  # another key in DNS
    assert not verifies(data, dnsfunc({f"{SELECTOR}._domainkey.{DOMAIN}": record}))


async def test_mail_send_and_send_many_deliver_verifiable_mail(signed: Any, handler: RecordingHandler) -> None:
    fields, dns = signed
    async with smtp_server(handler) as port, standalone(config(port, **fields)) as mail:
        first, *rest = tricky_messages()
        await mail.send(first)
        results = await mail.send_many(rest)
        assert all(r.ok for r in results), results
    assert len(handler.received) == 3
    assert all(verifies(r.data, dns) for r in handler.received)


def test_several_domains_from_a_keys_file_choose_the_key_by_from(tmp_path: Path) -> None:
    rsa_key, rsa_record = keygen(tmp_path, "rsa", domain="example.com", selector="a")
    ed_key, ed_record = keygen(tmp_path, "ed25519", domain="shop.example", selector="b")
    keys_file = tmp_path / "keys" / "dkim.json"
    keys_file.write_text(
        json.dumps(
            {
                "example.com": {"selector": "a", "key_file": rsa_key.name},
                "shop.example": {"selector": "b", "key_file": str(ed_key)},
            }
        )
    )
    cfg = MailConfig(default_sender="a@example.com", dkim_keys_file=keys_file)
    dns = dnsfunc({"a._domainkey.example.com": rsa_record, "b._domainkey.shop.example": ed_record})
    plain = build_envelope(Message("x", recipients=["z@example.org"], body="x"), cfg).data
    shop = build_envelope(Message("x", recipients=["z@example.org"], body="x", sender="s@shop.example"), cfg).data
    assert signature_tags(plain)["d"] == "example.com" and signature_tags(shop)["d"] == "shop.example"
    assert verifies(plain, dns) and verifies(shop, dns)


def test_a_from_domain_without_a_key_is_sent_unsigned_with_a_log_field(
    signed: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fields, _ = signed
    with caplog.at_level(logging.WARNING, logger="mailsvc.dkim"):
        env = build_envelope(
            Message("x", recipients=["z@example.org"], body="x", sender="n@elsewhere.example"), config(25, **fields)
        )
    assert not env.data.startswith(b"DKIM-Signature")
    [record] = [r for r in caplog.records if r.name == "mailsvc.dkim"]
    assert record.dkim == "unsigned" and record.from_domain == "elsewhere.example"
    assert record.message_id == env.message_id


@pytest.mark.parametrize(
    "fields, setting",
    [
        ({"dkim_domain": DOMAIN, "dkim_selector": SELECTOR, "dkim_key_file": "missing.pem"}, "MAIL_DKIM_KEY_FILE"),
        ({"dkim_domain": DOMAIN, "dkim_selector": SELECTOR, "dkim_key_file": "garbage.pem"}, "MAIL_DKIM_KEY_FILE"),
        ({"dkim_domain": DOMAIN, "dkim_key_file": "garbage.pem"}, "MAIL_DKIM_SELECTOR"),
        ({"dkim_keys_file": "garbage.pem"}, "MAIL_DKIM_KEYS_FILE"),
        ({"dkim_keys_file": "bad-entry.json"}, "MAIL_DKIM_KEYS_FILE"),
    ],
)
def test_a_key_that_cannot_be_read_or_parsed_stops_the_config(
    fields: dict[str, str], setting: str, tmp_path: Path
) -> None:
    (tmp_path / "garbage.pem").write_text("-----BEGIN RSA PRIVATE KEY-----\nnot a key\n-----END RSA PRIVATE KEY-----\n")
    (tmp_path / "bad-entry.json").write_text(json.dumps({"example.com": {"selector": "s1"}}))
    mapping = {f"MAIL_{k.upper()}": str(tmp_path / v) if k.endswith("file") else v for k, v in fields.items()}
    with pytest.raises(ConfigError) as exc:
        MailConfig.from_mapping(mapping)
    assert exc.value.setting == setting, exc.value


def test_service_settings_name_the_service_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from settings import load_settings

    monkeypatch.chdir(tmp_path)
    for k, v in {"MAILSVC_DKIM_DOMAIN": DOMAIN, "MAILSVC_DKIM_SELECTOR": SELECTOR}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MAILSVC_DKIM_KEY_FILE", str(tmp_path / "nope.pem"))
    with pytest.raises(SystemExit) as exc:
        load_settings()
    assert "MAILSVC_DKIM_KEY_FILE: cannot read the DKIM key" in str(exc.value)


def test_service_settings_reach_the_config_and_warn_of_an_unsigned_default_sender(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from settings import load_settings

    key, _ = keygen(tmp_path, "ed25519", domain="other.example")
    monkeypatch.chdir(tmp_path)
    env = {"MAILSVC_DKIM_DOMAIN": "other.example", "MAILSVC_DKIM_SELECTOR": SELECTOR, "MAILSVC_DKIM_KEY_FILE": str(key)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MAIL_DEFAULT_SENDER", "shop@example.com")
    with caplog.at_level(logging.WARNING, logger="mailsvc"):
        cfg = load_settings().mail_config()
    assert cfg.dkim_keyring().key_for("other.example") is not None
    assert "DKIM: no key for example.com" in caplog.text


class FirstDataDeferred(RecordingHandler):
    """Answers 451 to the first DATA, recording the bytes it was sent; accepts the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.deferred: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: SMTPEnvelope) -> str:
        if not self.deferred:
            self.deferred.append(bytes(envelope.original_content or b""))
            return "451 4.3.0 try again later"
        return await super().handle_DATA(server, session, envelope)


async def test_bulk_api_outbox_worker_deliver_verifiable_mail_and_a_retry_sends_the_same_bytes(
    signed: Any, tmp_path: Path
) -> None:
    fields, dns = signed
    handler = FirstDataDeferred()
    raw = b"%PDF-1.4\n" + bytes(range(256)) * 64
    body = {
        "sender": "Zoë Ünïcode <shop@example.com>",
        "subject": "Grüße {{ name }} — 件名",
        "text": "Dear {{ name }}",
        "html": "<p>Dear {{ name }}</p>",
        "attachments": [
            {"filename": "r.pdf", "content_type": "application/pdf", "content": base64.b64encode(raw).decode()}
        ],
        "recipients": [{"to": f"u{i}@example.org", "context": {"name": f"Jürgen {i}"}} for i in range(4)],
    }
    async with smtp_server(handler) as port:
        app = create_app(config(port, **fields), service_config(tmp_path, allow_sender=True))
        async with app.test_app() as test_app:
            client = test_app.test_client()
            r = await client.post("/api/messages/bulk", json=body, headers=AUTH)
            assert r.status_code == 202, await r.get_data(as_text=True)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while len(handler.received) < 4 and loop.time() < deadline:
                await asyncio.sleep(0.02)
    assert len(handler.received) == 4
    assert all(verifies(r.data, dns) for r in handler.received)
    [first_try] = handler.deferred
    retried = [r.data for r in handler.received if r.data == first_try]
    assert retried == [first_try], "the retry after 451 must send the bytes of the first attempt"


@pytest.fixture(scope="module")
def rsa_ring(tmp_path_factory: pytest.TempPathFactory) -> tuple[Keyring, Callable[..., bytes | None]]:
    key, record = keygen(tmp_path_factory.mktemp("rsa"), "rsa")
    return Keyring({DOMAIN: load_key(key, DOMAIN, SELECTOR, "X")}), dnsfunc({f"{SELECTOR}._domainkey.{DOMAIN}": record})


_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=200)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    subject=_TEXT,
    name=_TEXT,
    body=st.text(max_size=3000),
    html=st.none() | _TEXT,
    cc=st.booleans(),
    unsubscribe=st.booleans(),
)
def test_openssl_rsa_signatures_are_dkimpys_byte_for_byte(
    rsa_ring: Any, subject: str, name: str, body: str, html: str | None, cc: bool, unsubscribe: bool
) -> None:
    """The RSA step runs in OpenSSL, the rest is dkimpy's: the header equals dkimpy's own, and verifies."""
    ring, dns = rsa_ring
    extra = {"List-Unsubscribe": "<https://example.com/u/x>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    msg = Message(
        subject,
        sender=(name, "shop@example.com"),
        recipients=[(name, "ann@example.org")],
        cc=["cy@example.org"] if cc else None,
        body=body,
        html=html,
        extra_headers=extra if unsubscribe else None,
    )
    data = build_envelope(msg, MailConfig()).data
    key = ring.key_for(DOMAIN)
    for _ in range(3):  # t= is the current second: compare two signatures made within the same one
        ours = ring.sign(data, DOMAIN)
        assert ours is not None
        include = signature_tags(ours)["h"].encode().split(b":")
        theirs = (
            dkim.sign(
                data,
                SELECTOR.encode(),
                DOMAIN.encode(),
                key.private,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=include,
            )
            + data
        )
        if signature_tags(ours)["t"] == signature_tags(theirs)["t"]:
            break
    assert ours == theirs
    assert verifies(ours, dns)


def test_keygen_never_overwrites_a_key_and_check_compares_the_p_tag(tmp_path: Path) -> None:
    key, record = keygen(tmp_path, "ed25519")
    before = key.read_bytes()
    args = argparse.Namespace(
        dkim_action="keygen", domain=DOMAIN, selector=SELECTOR, algorithm="rsa", out=tmp_path / "keys"
    )
    with contextlib.redirect_stderr(io.StringIO()):
        assert dkim_command.run(args) != 0
    assert key.read_bytes() == before
    public = load_key(key, DOMAIN, SELECTOR, "X").public
    assert dkim_command.record_matches(record, public)
    assert dkim_command.record_matches(record.replace("p=", "p= ") + " ;", public)
    assert not dkim_command.record_matches(record[:-4] + "AAA=", public)
    assert not dkim_command.record_matches("v=DKIM1; k=ed25519; p=", public)
