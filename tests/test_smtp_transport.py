"""SMTP delivery against real aiosmtpd servers: plain, implicit TLS, STARTTLS, AUTH, and faults.

Faults are injected on the server (RecordingHandler), never by patching aiosmtplib.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
import warnings

import pytest

from mailsvc import ConnectionFailedError, DeliveryError, Mail, Message, TransportSecurityError
from mailsvc.errors import AuthenticationError
from mailsvc.transports import SMTPTransport
from tests.helpers import PASSWORD, USER, config, standalone
from tests.servers import Authenticator, ConnectionCounter, RecordingHandler, smtp_server, threaded_smtp_server


def msg(to: str = "ann@example.com", **kw: object) -> Message:
    return Message("Hello", recipients=[to], body="hi there", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["plain", "ssl", "starttls"])
@pytest.mark.parametrize("auth", [False, True])
async def test_modes_deliver(mode: str, auth: bool, server_ssl_context: ssl.SSLContext, ca_file: str) -> None:
    handler = RecordingHandler()
    authenticator = Authenticator(USER, PASSWORD) if auth else None
    server_kw: dict[str, object] = {"authenticator": authenticator, "auth_require_tls": mode == "starttls"}
    client_kw: dict[str, object] = {}
    if mode == "ssl":
        server_kw["ssl_context"] = server_ssl_context
        client_kw.update(use_ssl=True, ca_file=ca_file)
    elif mode == "starttls":
        server_kw["tls_context"] = server_ssl_context
        server_kw["require_starttls"] = True
        client_kw.update(use_tls=True, ca_file=ca_file)
    if auth:
        client_kw.update(username=USER, password=PASSWORD)
    async with smtp_server(handler, **server_kw) as port:  # type: ignore[arg-type]
        async with standalone(config(port, **client_kw)) as mail:
            result = await mail.send(msg())
    assert result.ok and result.delivered == ["ann@example.com"]
    [got] = handler.received
    assert got.mail_from == "shop@example.com" and got.rcpt_tos == ["ann@example.com"]
    assert got.message["Subject"] == "Hello"
    assert got.message.get_content().strip() == "hi there"
    if authenticator is not None:
        assert authenticator.attempts == 1


async def test_wrong_password_is_a_delivery_error_with_the_reply() -> None:
    handler, authenticator = RecordingHandler(), Authenticator(USER, PASSWORD)
    async with smtp_server(handler, authenticator=authenticator, auth_require_tls=False) as port:
        async with standalone(config(port, username=USER, password="wrong")) as mail:
            with pytest.raises(DeliveryError) as err:
                await mail.send(msg())
    assert err.value.code == 535
    assert "MAIL_USERNAME" in str(err.value) and "wrong" not in str(err.value)
    assert handler.received == []


async def test_starttls_stripped_fails_before_auth() -> None:
    """The server would happily take AUTH in clear; the client must not get that far."""
    handler, authenticator = RecordingHandler(), Authenticator(USER, PASSWORD)
    async with smtp_server(handler, authenticator=authenticator, auth_require_tls=False) as port:
        async with standalone(config(port, use_tls=True, username=USER, password=PASSWORD)) as mail:
            with pytest.raises(TransportSecurityError) as err:
                await mail.send(msg())
    assert "STARTTLS" in str(err.value)
    assert authenticator.attempts == 0
    assert handler.received == []


@pytest.mark.parametrize("mode", ["ssl", "starttls"])
async def test_untrusted_certificate_fails_without_plaintext_fallback(
    mode: str, server_ssl_context: ssl.SSLContext
) -> None:
    handler, authenticator = RecordingHandler(), Authenticator(USER, PASSWORD)
    counter = ConnectionCounter()
    server_kw: dict[str, object] = (
        {"ssl_context": server_ssl_context} if mode == "ssl" else {"tls_context": server_ssl_context}
    )
    client_kw = {"use_ssl": True} if mode == "ssl" else {"use_tls": True}
    async with smtp_server(
        handler,
        authenticator=authenticator,
        auth_require_tls=False,
        connections=counter,
        **server_kw,  # type: ignore[arg-type]
    ) as port:
        async with standalone(config(port, username=USER, password=PASSWORD, **client_kw)) as mail:
            with pytest.raises(TransportSecurityError) as err:
                await mail.send(msg())
            results = await mail.send_many([msg()])
    assert "certificate" in str(err.value).lower()
    assert results[0].recipients[0].status == "failed"
    assert counter.count == 2  # one attempt per send, never a second plaintext try
    assert authenticator.attempts == 0
    assert handler.received == []


async def test_validate_certs_off_is_an_explicit_opt_out(server_ssl_context: ssl.SSLContext) -> None:
    handler = RecordingHandler()
    async with smtp_server(handler, ssl_context=server_ssl_context) as port:
        async with standalone(config(port, use_ssl=True, validate_certs=False)) as mail:
            assert (await mail.send(msg())).ok
    assert len(handler.received) == 1


async def test_nothing_listening_is_connection_failed() -> None:
    async with smtp_server(RecordingHandler()) as port:
        pass  # the port is closed again: nothing listens there now
    async with standalone(config(port)) as mail:
        with pytest.raises(ConnectionFailedError):
            await mail.send(msg())


async def test_greeting_refusal_carries_code() -> None:
    async with smtp_server(RecordingHandler(), greeting_reply="554 go away") as port:
        transport = SMTPTransport(config(port))
        with pytest.raises(ConnectionFailedError) as err:
            await transport.open()
    assert err.value.code == 554 and "go away" in (err.value.reply or "")
    assert not transport.is_open


@pytest.mark.parametrize("reply, code", [("451 4.3.0 try again later", 451), ("554 5.7.1 spam", 554)])
async def test_data_reply_4xx_5xx_is_refused_with_code(reply: str, code: int) -> None:
    handler = RecordingHandler(data_reply=reply)
    async with smtp_server(handler) as port:
        async with standalone(config(port)) as mail:
            [result] = await mail.send_many([msg()])
            with pytest.raises(DeliveryError) as err:
                await mail.send(msg())
    [r] = result.recipients
    assert (r.status, r.code) == ("refused", code)
    assert r.reply in reply
    assert r.transient is (code < 500)
    assert err.value.code == code and err.value.reply and err.value.reply in reply
    assert handler.received == []


async def test_partial_refusal_is_in_the_return_value() -> None:
    handler = RecordingHandler(refuse={"bad@example.com": "550 5.1.1 no such user"})
    async with smtp_server(handler) as port:
        async with standalone(config(port)) as mail:
            result = await mail.send(Message("Hi", recipients=["ann@example.com", "bad@example.com"], body="x"))
            with pytest.raises(DeliveryError) as err:
                await mail.send(msg("bad@example.com"))
    assert result.delivered == ["ann@example.com"]
    bad = result.refused["bad@example.com"]
    assert (bad.status, bad.code, bad.reply) == ("refused", 550, "5.1.1 no such user")
    assert err.value.code == 550 and err.value.reply == "5.1.1 no such user"
    assert [r.rcpt_tos for r in handler.received] == [["ann@example.com"]]


async def test_drop_mid_data_fails_and_connection_is_replaced() -> None:
    handler = RecordingHandler(drop_after_data=True)
    counter = ConnectionCounter()
    async with smtp_server(handler, connections=counter) as port:
        async with standalone(config(port, pool_size=1)) as mail:
            [dropped] = await mail.send_many([msg()])
            handler.drop_after_data = False
            ok = await mail.send(msg("bob@example.com"))
            again = await mail.send(msg("carl@example.com"))
    [r] = dropped.recipients
    assert r.status == "failed" and r.code is None and r.reply
    assert ok.ok and again.ok
    assert counter.count == 2  # the broken connection was replaced once, then reused
    assert [x.rcpt_tos for x in handler.received] == [["bob@example.com"], ["carl@example.com"]]


async def test_stalling_server_hits_overall_deadline_and_pool_recovers() -> None:
    handler = RecordingHandler(stall_seconds=1.5)
    counter = ConnectionCounter()
    async with smtp_server(handler, connections=counter) as port:
        async with standalone(config(port, timeout=0.5, pool_size=1)) as mail:
            [stalled] = await mail.send_many([msg()])
            with pytest.raises(ConnectionFailedError) as err:
                await mail.send(msg())
            handler.stall_seconds = 0.0
            ok = await mail.send(msg("bob@example.com"))
    [r] = stalled.recipients
    assert r.status == "failed" and "MAIL_TIMEOUT" in r.reply
    assert "MAIL_TIMEOUT" in str(err.value)
    assert ok.ok
    assert counter.count == 3
    assert [x.rcpt_tos for x in handler.received][-1] == ["bob@example.com"]


async def test_transport_reopens_after_server_closed_idle_connection() -> None:
    handler = RecordingHandler()
    async with smtp_server(handler) as port:
        transport = SMTPTransport(config(port))
        async with transport:
            assert transport.is_open
            assert (await transport.send(msg().build(default_sender="shop@example.com"))).ok
            assert transport.sent == 1
        assert not transport.is_open
        await transport.close()  # safe twice
    assert len(handler.received) == 1


async def test_wire_bytes_are_safe_and_structure_survives() -> None:
    """Everything at once, checked on the bytes the server received: line length, CRLF only,
    dot-stuffing and an SMTP-smuggling attempt, IDNA, RFC 2047/2231, Bcc only in the envelope."""
    smuggle = "hi\n.\nMAIL FROM:<evil@evil.example>\r\n.\r\nRCPT TO:<victim@evil.example>\n\r.\r"
    body = smuggle + "\n" + ("long " * 1000) + "\n" + ".leading dot\n"
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 20
    m = Message(
        "Grüße — " + "lang " * 300,
        recipients=[("Zoë", "zoe@bücher.example")],
        cc=["cc@example.com"],
        bcc=["hidden@example.com"],
        body=body,
        html="<p>" + "x" * 3000 + '</p><img src="cid:logo">',
        sender=("Café", "shop@example.com"),
        reply_to="help@example.com",
    )
    m.attach("données.bin", "application/octet-stream", png)
    m.attach("logo.png", "image/png", png, "inline", {"Content-ID": "<logo>"})
    handler = RecordingHandler()
    async with smtp_server(handler) as port:
        async with standalone(config(port)) as mail:
            assert (await mail.send(m)).ok
    [got] = handler.received
    assert sorted(got.rcpt_tos) == ["cc@example.com", "hidden@example.com", "zoe@xn--bcher-kva.example"]
    assert got.data.endswith(b"\r\n")
    for line in got.data[:-2].split(b"\r\n"):
        assert len(line) <= 998
        assert b"\r" not in line and b"\n" not in line
    assert b"hidden@example.com" not in got.data
    parsed = got.message
    assert "Bcc" not in parsed
    assert parsed["To"].addresses[0].domain == "xn--bcher-kva.example"
    assert parsed["To"].addresses[0].display_name == "Zoë"
    assert parsed["Subject"] == "Grüße — " + "lang " * 300
    assert parsed["Message-ID"] == m.msgId
    text = parsed.get_body(("plain",))
    assert text is not None
    assert text.get_content().replace("\r\n", "\n") == body.replace("\r\n", "\n").replace("\r", "\n")
    assert parsed.get_content_type() == "multipart/mixed"
    alt, binary = list(parsed.iter_parts())
    plain, related = list(alt.iter_parts())
    assert related.get_content_type() == "multipart/related"
    assert [p.get_content_type() for p in related.iter_parts()] == ["text/html", "image/png"]
    assert list(related.iter_parts())[1].get_content() == png
    assert binary.get_filename() == "données.bin" and binary.get_content() == png


@pytest.mark.parametrize("kind", ["smtp", "memory"])
async def test_transport_contract(kind: str) -> None:
    """One contract, every implementation: open, send reports every recipient, close twice."""
    from mailsvc.transports import MemoryTransport, Transport

    handler = RecordingHandler(refuse={"no@example.com": "550 nope"} if kind == "smtp" else {})
    envelope = Message("c", recipients=["yes@example.com", "no@example.com"], body="x").build(
        default_sender="s@example.com"
    )
    async with smtp_server(handler) as port:
        transport: Transport = SMTPTransport(config(port)) if kind == "smtp" else MemoryTransport()
        assert not transport.is_open
        async with transport:
            assert transport.is_open
            result = await transport.send(envelope)
            assert transport.sent == 1
        assert not transport.is_open
        await transport.close()
    assert result.message_id == envelope.message_id
    assert [r.recipient for r in result.recipients] == ["yes@example.com", "no@example.com"]
    assert result.recipients[0].status == "delivered"


async def test_421_on_rcpt_closes_the_connection_and_next_send_reconnects() -> None:
    class Closing(RecordingHandler):
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
            if address == "shut@example.com":
                server.transport.close()  # what a server does after "421 closing"
                return "421 4.3.2 shutting down"
            return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    handler, counter = Closing(), ConnectionCounter()
    async with smtp_server(handler, connections=counter) as port:
        async with standalone(config(port, pool_size=1)) as mail:
            [first] = await mail.send_many([msg("shut@example.com")])
            second = await mail.send(msg("bob@example.com"))
    assert first.recipients[0].status in ("refused", "failed")
    assert second.ok
    assert counter.count == 2


@pytest.mark.parametrize("server_has_smtputf8", [True, False])
async def test_non_ascii_local_part_needs_smtputf8(server_has_smtputf8: bool) -> None:
    handler = RecordingHandler()
    async with smtp_server(handler, smtputf8=server_has_smtputf8) as port:
        async with standalone(config(port, pool_size=1)) as mail:
            [utf8] = await mail.send_many([Message("Hi", recipients=["zoë@example.com", "ann@example.com"], body="x")])
            ascii_after = await mail.send(msg("bob@example.com"))
    assert ascii_after.ok
    if server_has_smtputf8:
        assert utf8.ok
        assert handler.received[0].rcpt_tos == ["zoë@example.com", "ann@example.com"]
    else:
        assert [(r.status, r.code) for r in utf8.recipients] == [("refused", 553)] * 2
        assert not utf8.recipients[0].transient and "SMTPUTF8" in utf8.recipients[0].reply
        assert [r.rcpt_tos for r in handler.received] == [["bob@example.com"]]


async def test_server_that_never_greets_hits_the_connect_deadline() -> None:
    """A TCP listener that accepts and stays silent: the connect must give up at MAIL_TIMEOUT."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with standalone(config(port, timeout=0.3)) as mail:
            with pytest.raises(ConnectionFailedError) as err:
                await mail.send(msg())
    finally:
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
    assert "MAIL_TIMEOUT" in str(err.value)
    assert len(accepted) == 1


async def test_sender_refused_is_refused_for_every_recipient_and_connection_kept() -> None:
    class NoSender(RecordingHandler):
        async def handle_MAIL(self, server, session, envelope, address, mail_options):  # type: ignore[no-untyped-def]
            if address == "blocked@example.com":
                return "553 5.7.1 sender not allowed"
            envelope.mail_from = address
            return "250 OK"

    handler, counter = NoSender(), ConnectionCounter()
    async with smtp_server(handler, connections=counter) as port:
        async with standalone(config(port, pool_size=1)) as mail:
            with pytest.raises(DeliveryError) as err:
                await mail.send(
                    Message("x", recipients=["a@example.com", "b@example.com"], body="x", sender="blocked@example.com")
                )
            ok = await mail.send(msg())
    result = err.value.result
    assert err.value.code == 553
    assert result is not None and [(r.status, r.code) for r in result.recipients] == [("refused", 553)] * 2  # type: ignore[attr-defined]
    assert ok.ok and counter.count == 1


@pytest.mark.parametrize("mode", ["ssl", "starttls"])
async def test_close_returns_with_the_tls_socket_closed(
    mode: str, server_ssl_context: ssl.SSLContext, ca_file: str
) -> None:
    """``mail.send_sync`` (``asyncio.run``) ends its loop right after closing the pool: a TLS shutdown
    still under way then left the socket open until garbage collection (a ResourceWarning)."""
    ssl_context, tls_context = (server_ssl_context, None) if mode == "ssl" else (None, server_ssl_context)
    async with smtp_server(RecordingHandler(), ssl_context=ssl_context, tls_context=tls_context) as port:
        transport = SMTPTransport(config(port, ca_file=ca_file, use_ssl=mode == "ssl", use_tls=mode == "starttls"))
        await transport.open()
        assert transport._smtp is not None and transport._smtp.transport is not None
        sock = transport._smtp.transport.get_extra_info("socket")
        assert sock.fileno() != -1
        await transport.close()
        assert sock.fileno() == -1


def test_send_sync_over_tls_leaves_no_socket_behind(server_ssl_context: ssl.SSLContext, ca_file: str) -> None:
    """Delivered or refused at login, each ``send_sync`` closes its TLS socket before its ``asyncio.run`` ends."""
    handler, authenticator = RecordingHandler(), Authenticator(USER, PASSWORD)
    options = {"ssl_context": server_ssl_context, "authenticator": authenticator, "auth_require_tls": False}
    with threaded_smtp_server(handler, **options) as port:
        good = Mail(config=config(port, use_ssl=True, ca_file=ca_file, username=USER, password=PASSWORD))
        bad = Mail(config=config(port, use_ssl=True, ca_file=ca_file, username=USER, password="wrong"))
        with warnings.catch_warnings():  # what earlier tests left for the collector is not this test's to judge
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", ResourceWarning)
            for _ in range(5):
                assert good.send_sync(msg()).ok
                with pytest.raises(AuthenticationError):
                    bad.send_sync(msg())
                gc.collect()
    leaks = [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)]
    ours = f"raddr=('127.0.0.1', {port})"  # a socket to another test's server is not this test's leak
    assert [m for m in leaks if "raddr=" not in m or ours in m] == []
    assert len(handler.received) == 5
