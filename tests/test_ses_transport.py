"""Amazon SES v2 as a transport, against moto's SES served over real HTTP in this process.

What SES stored is read back from moto's backend (the bytes it was given, and the destinations).
Throttling is a real HTTP front (an asyncio server) that answers the first requests with SES's 429
``TooManyRequestsException`` and forwards the rest to moto: aiobotocore parses real responses throughout.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import dkim
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.server import ThreadedMotoServer
from moto.ses.models import ses_backends

from mailsvc import Attachment, Mail, MailConfig, Message
from mailsvc.config import ServiceConfig
from mailsvc.errors import ConfigError, ConnectionFailedError, RecipientsRefusedError
from mailsvc.logsetup import QUIET_LOGGERS, configure_logging
from mailsvc.outbox import SqliteOutbox
from mailsvc.settings import Settings
from mailsvc.transports.factory import resolve
from mailsvc.transports.ses import SESTransport
from mailsvc.worker import WorkerGroup
from tests.test_dkim import DOMAIN, SELECTOR, dnsfunc, keygen
from tests.test_worker import FAST, until

REGION = "eu-west-1"
SENDER = f"shop@{DOMAIN}"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def ses(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh SES backend with the sender's domain verified; AWS credentials only in the environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTTESTTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-never-logged")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    ses_backends[DEFAULT_ACCOUNT_ID].reset()
    backend = ses_backends[DEFAULT_ACCOUNT_ID][REGION]
    backend.verify_domain(DOMAIN)
    yield backend


def ses_config(url: str, **extra: Any) -> MailConfig:
    fields: dict[str, Any] = {"default_sender": SENDER, "timeout": 5, **extra}
    return MailConfig(transport="ses", ses_region=REGION, ses_endpoint_url=url, **fields)


@asynccontextmanager
async def mail(config: MailConfig) -> AsyncIterator[Mail]:
    m = Mail(config=config)
    try:
        yield m
    finally:
        await m.state.aclose()


async def test_raw_bytes_reach_ses_unchanged_and_their_dkim_signature_verifies(
    ses: Any, moto_url: str, tmp_path: Path
) -> None:
    key, record = keygen(tmp_path, "rsa")
    config = ses_config(moto_url, dkim_domain=DOMAIN, dkim_selector=SELECTOR, dkim_key_file=key)
    msg = Message(
        "Grüße, Zoë",
        sender=("Zoë Ünal", SENDER),
        recipients=["ann@example.net"],
        bcc=["audit@example.net"],
        body="Hallo",
        html="<p>Hallo</p>",
        attachments=[Attachment("r.pdf", "application/pdf", b"%PDF-1.4 " + bytes(range(256)))],
    )
    async with mail(config) as m:
        result = await m.send(msg)  # the library's path
        envelope = m.state.build(msg)
    assert result.ok and all("queued by SES as" in r.reply for r in result.recipients)
    transport = SESTransport(config)  # and one envelope's exact bytes
    await transport.open()
    try:
        assert (await transport.send(envelope)).ok
    finally:
        await transport.close()
    first, stored = ses.sent_messages
    assert stored.raw_data.encode() == envelope.data  # our bytes, as built and signed
    assert stored.source == SENDER
    assert {"ann@example.net", "audit@example.net"} <= set(stored.destinations)  # Bcc is an envelope recipient
    assert b"audit@example.net" not in envelope.data
    dns = dnsfunc({f"{SELECTOR}._domainkey.{DOMAIN}": record})
    assert dkim.verify(first.raw_data.encode(), dnsfunc=dns) and dkim.verify(stored.raw_data.encode(), dnsfunc=dns)


async def test_recipients_beyond_the_per_call_limit_go_out_in_several_calls(ses: Any, moto_url: str) -> None:
    """The same bytes in calls of ``MAIL_SES_MAX_RECIPIENTS`` (moto counts the To header too: hence 1 + 25)."""
    bcc = [f"r{i}@example.net" for i in range(59)]
    async with mail(ses_config(moto_url, ses_max_recipients=25)) as m:
        result = await m.send(Message("Hi", recipients=["ann@example.net"], bcc=bcc, body="x"))
    assert result.ok and len(result.recipients) == 60
    assert [len(set(s.destinations)) for s in ses.sent_messages] == [25, 26, 11]  # each call's + the To header
    assert len({s.raw_data for s in ses.sent_messages}) == 1
    assert set().union(*(s.destinations for s in ses.sent_messages)) == {"ann@example.net", *bcc}


async def test_message_rejected_is_a_permanent_refusal(ses: Any, moto_url: str) -> None:
    """moto, like SES, rejects a sender whose identity is not verified."""
    async with mail(ses_config(moto_url, default_sender="someone@unverified.example")) as m:
        with pytest.raises(RecipientsRefusedError) as err:
            await m.send(Message("Hi", recipients=["ann@example.net"], body="x"))
    code, reply = err.value.recipients["ann@example.net"]
    assert code == 554 and "MessageRejected" in reply.decode()
    assert ses.sent_messages == []


class ThrottlingFront:
    """A real HTTP server: the first ``throttle`` POSTs get SES's 429, every other request goes to moto."""

    def __init__(self, upstream: str, throttle: int) -> None:
        self.upstream_host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream_port = int(port)
        self.throttle = throttle
        self.throttled = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> ThrottlingFront:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                body = await reader.readexactly(length)
                if head.startswith(b"POST ") and self.throttled < self.throttle:
                    self.throttled += 1
                    payload = b'{"message":"Maximum sending rate exceeded."}'
                    writer.write(
                        b"HTTP/1.1 429 Too Many Requests\r\nx-amzn-ErrorType: TooManyRequestsException\r\n"
                        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
                    )
                else:
                    writer.write(await self._forward(head, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _forward(self, head: bytes, body: bytes) -> bytes:
        r, w = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        lines = [ln for ln in head.split(b"\r\n") if ln and not ln.lower().startswith(b"connection:")]
        w.write(b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + body)
        await w.drain()
        answer = await r.read()
        w.close()
        # moto answers with Connection: close; keep our client's connection alive instead.
        answer = answer.replace(b"Connection: close\r\n", b"").replace(b"connection: close\r\n", b"")
        return answer


async def test_throttling_defers_and_the_worker_delivers_on_retry(ses: Any, moto_url: str, tmp_path: Path) -> None:
    async with ThrottlingFront(moto_url, throttle=2) as front, SqliteOutbox(tmp_path / "o.sqlite3") as outbox:
        config = ses_config(front.url)
        msg = Message("Hi", recipients=["ann@example.net"], body="x", sender=SENDER)
        [id_] = (await outbox.enqueue([msg.build()])).ids
        group = WorkerGroup.from_service(outbox, config, ServiceConfig(**FAST))
        await group.start()
        try:
            status = await until(outbox, id_, lambda s: s.state == "delivered")
        finally:
            await group.stop()
    assert front.throttled == 2
    [rcpt] = status.recipients
    assert rcpt.attempts == 3 and rcpt.last_code == 250
    assert len(ses.sent_messages) == 1  # throttled attempts stored nothing: no duplicate


async def test_one_throttled_answer_is_a_454_deferral_not_a_failure(ses: Any, moto_url: str) -> None:
    async with ThrottlingFront(moto_url, throttle=1) as front:
        transport = SESTransport(ses_config(front.url))
        await transport.open()
        try:
            result = await transport.send(Message("Hi", recipients=["a@example.net"], body="x", sender=SENDER).build())
        finally:
            await transport.close()
    [r] = result.recipients
    assert r.code == 454 and r.reply.startswith("4.7.0") and r.transient


async def test_an_unreachable_endpoint_is_relay_trouble(ses: Any) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport = SESTransport(ses_config(f"http://127.0.0.1:{port}", timeout=2))
    await transport.open()
    try:
        with pytest.raises(ConnectionFailedError, match="SES unreachable"):
            await transport.send(Message("Hi", recipients=["a@example.net"], body="x", sender=SENDER).build())
    finally:
        await transport.close()


async def test_the_send_rate_paces_recipients(ses: Any, moto_url: str) -> None:
    """12 recipients at 3/s: the first second's 3 at once, the other 9 over at least 3 s (asserted as a lower bound).

    The rate is low because moto itself answers in tens of milliseconds: unpaced, the 12 take well under a second.
    """
    loop = asyncio.get_running_loop()
    async with mail(ses_config(moto_url, ses_max_send_rate=3, pool_size=4)) as m:
        started = loop.time()
        results = await m.send_many([Message("Hi", recipients=[f"r{i}@example.net"], body="x") for i in range(12)])
        elapsed = loop.time() - started
    assert all(r.ok for r in results) and len(ses.sent_messages) == 12
    assert elapsed >= 2.7


async def test_a_debug_log_holds_no_credential_and_no_body(
    ses: Any, moto_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    names = ["mailsvc", *QUIET_LOGGERS]
    levels = {n: logging.getLogger(n).level for n in names}
    configure_logging("DEBUG")
    caplog.set_level(logging.DEBUG)
    try:
        async with mail(ses_config(moto_url, ses_max_send_rate=100)) as m:
            await m.send(Message("Hi", recipients=["ann@example.net"], body="the secret body text"))
    finally:  # leave logging as the next test expects it
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert ses.sent_messages
    assert "test-secret-never-logged" not in text and "AKIATESTTESTTEST" not in text
    assert "the secret body text" not in text and "dGhlIHNlY3JldCBib2R5" not in text  # nor its base64


def test_settings_choose_ses_and_leave_dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIL_TRANSPORT", "ses")
    monkeypatch.setenv("MAIL_SES_REGION", REGION)
    monkeypatch.setenv("MAIL_DEFAULT_SENDER", SENDER)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert not settings.dev_mode
    assert settings.mail_config().ses_region == REGION
    assert resolve(settings.mail_config().transport or "") is SESTransport


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"ses_endpoint_url": "http://ses.example.com"}, "ses_endpoint_url"),
        ({"ses_endpoint_url": "ftp://127.0.0.1"}, "ses_endpoint_url"),
        ({"ses_region": "eu-west-1\r\nX: y"}, "ses_region"),
        ({"ses_max_send_rate": 0}, "ses_max_send_rate"),
        ({"ses_configuration_set": "a b"}, "ses_configuration_set"),
        ({"ses_max_recipients": 51}, "ses_max_recipients"),
    ],
)
def test_bad_ses_settings_are_refused_by_name(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        MailConfig(transport="ses", **{"ses_region": REGION, **fields})


def test_ses_without_a_region_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="MAIL_SES_REGION"):
        SESTransport(MailConfig(transport="ses"))
