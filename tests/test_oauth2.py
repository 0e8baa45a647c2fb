"""OAuth2 relays (XOAUTH2, OAUTHBEARER) on real parts: a token endpoint over HTTP, aiosmtpd over STARTTLS.

Each test has a token endpoint of its own (its URL is part of the credentials), so the process-wide
token source of one test is never another's. Token expiry is driven by the source's clock, not by waiting.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import queue
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from quart import Quart

from mailsvc import AuthenticationError, ConfigError, DeliveryError, Mail, MailConfig, Message
from mailsvc.app import create_app
from mailsvc.oauth2 import TokenSource, token_source
from mailsvc.services import services
from mailsvc.transports.smtp import SMTPTransport
from tests.helpers import standalone
from tests.oauth2_servers import (
    CLIENT_ID,
    CLIENT_SECRET,
    MAILBOX,
    REFRESH_TOKEN,
    OAuthRelay,
    TokenServer,
    oauth_relay,
    oauth_settings,
    token_server,
)
from tests.servers import ConnectionCounter


def mail_config(tokens: TokenServer, port: int, ca_file: str, **extra: Any) -> MailConfig:
    return MailConfig.from_mapping(oauth_settings(tokens, port, ca_file, **extra))


def source_of(config: MailConfig) -> TokenSource:
    creds = config.oauth2()
    assert creds is not None
    return token_source(creds)


def msg(to: str = "ann@example.com") -> Message:
    return Message("Hi", recipients=[to], body="hello", sender=MAILBOX)


class Clock:
    """The token source's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_first_login_fetches_a_token_and_delivers_over_xoauth2(
    server_ssl_context: ssl.SSLContext, ca_file: str
) -> None:
    async with token_server() as tokens:
        relay = OAuthRelay(tokens=tokens)
        async with oauth_relay(relay, server_ssl_context) as port:
            async with standalone(mail_config(tokens, port, ca_file)) as mail:
                first = await mail.send(msg())
                second = await mail.send(msg("bob@example.com"))  # the pooled connection: no new login
    assert first.ok and second.ok
    assert tokens.refreshes == 1
    [form] = tokens.requests
    assert form == {
        "grant_type": ["refresh_token"],
        "refresh_token": [REFRESH_TOKEN],
        "client_id": [CLIENT_ID],
        "client_secret": [CLIENT_SECRET],
    }
    assert relay.attempts == [("XOAUTH2", MAILBOX, tokens.issued[0])]
    assert [r.rcpt_tos for r in relay.received] == [["ann@example.com"], ["bob@example.com"]]


async def test_a_token_is_renewed_before_it_expires(server_ssl_context: ssl.SSLContext, ca_file: str) -> None:
    async with token_server(TokenServer(expires_in=600)) as tokens:
        relay = OAuthRelay(tokens=tokens)
        async with oauth_relay(relay, server_ssl_context) as port:
            config = mail_config(tokens, port, ca_file, MAIL_MAX_EMAILS=1)  # a new connection (login) per message
            clock = source_of(config).clock = Clock()
            async with standalone(config) as mail:
                assert (await mail.send(msg())).ok
                clock.now += 600 - 61  # still more than a minute left: the same token
                assert (await mail.send(msg())).ok
                assert tokens.refreshes == 1
                clock.now += 2  # within the last minute: renewed before the relay could refuse it
                assert (await mail.send(msg())).ok
    assert tokens.refreshes == 2
    assert [token for _, _, token in relay.attempts] == [tokens.issued[0], tokens.issued[0], tokens.issued[1]]


@pytest.mark.parametrize("style", ["google", "microsoft"])
async def test_a_revoked_token_is_refreshed_once_and_the_login_retried(
    style: Any, server_ssl_context: ssl.SSLContext, ca_file: str
) -> None:
    async with token_server() as tokens:
        relay = OAuthRelay(tokens=tokens, style=style)
        async with oauth_relay(relay, server_ssl_context) as port:
            async with standalone(mail_config(tokens, port, ca_file, MAIL_MAX_EMAILS=1)) as mail:
                assert (await mail.send(msg())).ok
                tokens.valid.clear()  # revoked at the provider, still unexpired here
                assert (await mail.send(msg())).ok
    assert tokens.refreshes == 2
    first, revoked = tokens.issued
    assert [token for _, _, token in relay.attempts] == [first, first, revoked]
    # Google's 334 error challenge is answered with an empty line, as its XOAUTH2 documentation says.
    assert relay.after_challenge == ([b""] if style == "google" else [])
    assert len(relay.received) == 2


async def test_a_token_refused_after_the_refresh_fails_after_one_retry(
    server_ssl_context: ssl.SSLContext, ca_file: str
) -> None:
    async with token_server() as tokens:
        relay = OAuthRelay(tokens=tokens, refuse_all=True)
        async with oauth_relay(relay, server_ssl_context) as port:
            async with standalone(mail_config(tokens, port, ca_file)) as mail:
                with pytest.raises(AuthenticationError) as exc:
                    await mail.send(msg())
    assert exc.value.code == 535
    assert "MAIL_USERNAME" in str(exc.value) and "XOAUTH2" in str(exc.value)
    assert len(relay.attempts) == 2 and tokens.refreshes == 2  # one retry, not a loop
    assert relay.received == []


async def test_a_scope_challenge_is_not_retried(server_ssl_context: ssl.SSLContext, ca_file: str) -> None:
    async with token_server() as tokens:
        relay = OAuthRelay(tokens=tokens, challenge_status="400", refuse_all=True)
        async with oauth_relay(relay, server_ssl_context) as port:
            async with standalone(mail_config(tokens, port, ca_file)) as mail:
                with pytest.raises(AuthenticationError) as exc:
                    await mail.send(msg())
    assert "MAIL_OAUTH2_SCOPE" in str(exc.value)
    assert len(relay.attempts) == 1 and tokens.refreshes == 1


async def test_concurrent_logins_share_one_refresh(server_ssl_context: ssl.SSLContext, ca_file: str) -> None:
    """Eight connections log in at once; the endpoint answers only once all eight are connected."""
    n = 8
    connections = ConnectionCounter()
    async with token_server(TokenServer(hold=asyncio.Event())) as tokens:
        relay = OAuthRelay(tokens=tokens)
        async with oauth_relay(relay, server_ssl_context, connections=connections) as port:
            config = mail_config(tokens, port, ca_file, MAIL_POOL_SIZE=n)
            async with standalone(config) as mail:
                sending = asyncio.ensure_future(mail.send_many([msg(f"r{i}@example.com") for i in range(n)]))
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 20
                while connections.count < n and loop.time() < deadline and not sending.done():
                    await asyncio.sleep(0.01)
                assert connections.count == n
                await asyncio.sleep(0.05)  # let every login reach the token source
                assert tokens.hold is not None
                tokens.hold.set()
                results = await sending
    assert all(r.ok for r in results)
    assert tokens.refreshes == 1 and len(tokens.requests) == 1
    assert len(relay.attempts) == n and {t for _, _, t in relay.attempts} == {tokens.issued[0]}


@pytest.mark.parametrize(
    "offered, setting, used",
    [
        (("OAUTHBEARER",), None, "OAUTHBEARER"),  # XOAUTH2 not offered
        (("XOAUTH2", "OAUTHBEARER"), None, "XOAUTH2"),
        (("XOAUTH2", "OAUTHBEARER"), "oauthbearer", "OAUTHBEARER"),  # by setting
    ],
)
async def test_the_mechanism_follows_the_offer_or_the_setting(
    offered: tuple[str, ...], setting: str | None, used: str, server_ssl_context: ssl.SSLContext, ca_file: str
) -> None:
    async with token_server() as tokens:
        relay = OAuthRelay(tokens=tokens)
        async with oauth_relay(relay, server_ssl_context, mechanisms=offered) as port:
            extra = {"MAIL_OAUTH2_MECHANISM": setting} if setting else {}
            async with standalone(mail_config(tokens, port, ca_file, MAIL_MAX_EMAILS=1, **extra)) as mail:
                assert (await mail.send(msg())).ok
                tokens.valid.clear()
                assert (await mail.send(msg())).ok  # OAUTHBEARER's error challenge is answered with %x01 too
    assert [m for m, _, _ in relay.attempts] == [used] * 3
    assert relay.after_challenge == [b"" if used == "XOAUTH2" else b"\x01"]


async def test_no_oauth2_mechanism_offered_is_a_clear_error(server_ssl_context: ssl.SSLContext, ca_file: str) -> None:
    async with token_server() as tokens:
        relay = OAuthRelay(tokens=tokens)
        async with oauth_relay(relay, server_ssl_context, mechanisms=("PLAIN", "LOGIN")) as port:
            async with standalone(mail_config(tokens, port, ca_file)) as mail:
                with pytest.raises(DeliveryError, match="neither XOAUTH2 nor OAUTHBEARER"):
                    await mail.send(msg())
            forced = mail_config(tokens, port, ca_file, MAIL_OAUTH2_MECHANISM="OAUTHBEARER")
            async with standalone(forced) as mail:
                with pytest.raises(DeliveryError, match="MAIL_OAUTH2_MECHANISM"):
                    await mail.send(msg())
    assert tokens.refreshes == 0  # nothing asked of the endpoint for a relay that cannot take it


@pytest.mark.parametrize(
    "answer, error, words",
    [
        (
            (400, {"error": "invalid_grant", "error_description": f"bad {REFRESH_TOKEN}"}),
            AuthenticationError,
            "MAIL_OAUTH2_REFRESH_TOKEN",
        ),
        ((401, {"error": "invalid_client"}), AuthenticationError, "MAIL_OAUTH2_CLIENT_SECRET"),
        ((503, {"oops": CLIENT_SECRET}), DeliveryError, "HTTP 503"),
    ],
)
async def test_token_endpoint_refusals_name_the_setting_and_no_secret(
    answer: tuple[int, dict[str, Any]],
    error: type[Exception],
    words: str,
    server_ssl_context: ssl.SSLContext,
    ca_file: str,
) -> None:
    async with token_server(TokenServer(error=answer)) as tokens:
        relay = OAuthRelay(tokens=tokens)
        async with oauth_relay(relay, server_ssl_context) as port:
            async with standalone(mail_config(tokens, port, ca_file)) as mail:
                with pytest.raises(error) as exc:
                    await mail.send(msg())
    assert words in str(exc.value) and tokens.url in str(exc.value)
    assert_no_secret(str(exc.value))
    assert_no_secret(repr(exc.value))
    assert exc.value.__cause__ is None and exc.value.__suppress_context__  # the HTTP request (its body) is not chained
    assert relay.attempts == []


async def test_an_unreachable_token_endpoint_is_a_connection_failure(
    server_ssl_context: ssl.SSLContext, ca_file: str
) -> None:
    async with token_server() as tokens:
        pass  # closed: nothing listens on its port any more
    relay = OAuthRelay(tokens=tokens)
    async with oauth_relay(relay, server_ssl_context) as port:
        async with standalone(mail_config(tokens, port, ca_file)) as mail:
            result = await mail.state.pool.send(mail.state.build(msg()))
    assert not result.ok and "could not be reached" in result.recipients[0].reply  # type: ignore[operator]


def assert_no_secret(text: str, more: list[str] | None = None) -> None:
    for secret in (CLIENT_SECRET, REFRESH_TOKEN, *(more or [])):
        assert secret not in text, f"{secret[:12]}... leaked into {text[:200]!r}"
        assert base64.b64encode(secret.encode()).decode()[:16] not in text


async def test_no_token_or_secret_is_ever_logged(
    server_ssl_context: ssl.SSLContext, ca_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A whole life at DEBUG with MAIL_DEBUG: first token, a revoked one, a refused refresh; every line is clean."""
    caplog.set_level(logging.DEBUG)
    async with token_server(TokenServer(rotate=True)) as tokens:
        relay = OAuthRelay(tokens=tokens)
        async with oauth_relay(relay, server_ssl_context) as port:
            config = mail_config(tokens, port, ca_file, MAIL_MAX_EMAILS=1, MAIL_DEBUG=True)
            async with standalone(config) as mail:
                assert (await mail.send(msg())).ok
                texts = [repr(await source_of(config).token())]
                tokens.valid.clear()
                assert (await mail.send(msg())).ok
                tokens.valid.clear()
                tokens.error = (400, {"error": "invalid_grant", "error_description": f"gone: {REFRESH_TOKEN}-2"})
                with pytest.raises(AuthenticationError) as exc:
                    await mail.send(msg())
            texts += [str(exc.value), repr(exc.value), repr(config), str(config), repr(config.oauth2())]
            texts += [repr(source_of(config)), repr(SMTPTransport(config)), repr(config.model_dump())]
    issued = list(tokens.issued)
    assert len(issued) == 2 and tokens.requests[1]["refresh_token"] == [f"{REFRESH_TOKEN}-1"]  # the rotated one
    ours = [r for r in caplog.records if r.name != "mail.log"]  # aiosmtpd's own log is the test relay's
    assert any(r.name == "mailsvc.oauth2" for r in ours) and any("refreshing it once" in r.getMessage() for r in ours)
    rotated = [f"{REFRESH_TOKEN}-{n}" for n in (1, 2)]
    for text in texts + [r.getMessage() for r in ours] + [str(r.args) for r in ours]:
        assert_no_secret(text, issued + rotated)


@pytest.mark.parametrize(
    "change, setting",
    [
        ({"MAIL_PASSWORD": "app-password"}, "MAIL_PASSWORD"),
        ({"MAIL_USE_TLS": False}, "MAIL_OAUTH2_TOKEN_URL"),  # TLS before AUTH, even to loopback
        ({"MAIL_OAUTH2_TOKEN_URL": "http://oauth2.example.com/token"}, "MAIL_OAUTH2_TOKEN_URL"),
        ({"MAIL_OAUTH2_TOKEN_URL": "ftp://127.0.0.1/token"}, "MAIL_OAUTH2_TOKEN_URL"),
        ({"MAIL_OAUTH2_TOKEN_URL": "https://id:pw@oauth2.example.com/token"}, "MAIL_OAUTH2_TOKEN_URL"),
        ({"MAIL_OAUTH2_TOKEN_URL": "https://x.example\r\n/token"}, "MAIL_OAUTH2_TOKEN_URL"),
        ({"MAIL_OAUTH2_CLIENT_ID": None}, "MAIL_OAUTH2_CLIENT_ID"),
        ({"MAIL_OAUTH2_REFRESH_TOKEN": ""}, "MAIL_OAUTH2_REFRESH_TOKEN"),
        ({"MAIL_OAUTH2_TOKEN_URL": None}, "MAIL_OAUTH2_TOKEN_URL"),
        ({"MAIL_USERNAME": None}, "MAIL_USERNAME"),
        ({"MAIL_OAUTH2_MECHANISM": "PLAIN"}, "MAIL_OAUTH2_MECHANISM"),
    ],
)
def test_bad_settings_are_refused_by_name(change: dict[str, Any], setting: str, ca_file: str) -> None:
    data = {**oauth_settings(TokenServer(port=9), 587, ca_file), **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ConfigError) as exc:
        MailConfig.from_mapping(data)
    assert str(exc.value).startswith(f"{setting}: "), str(exc.value)
    assert_no_secret(str(exc.value))


@pytest.mark.parametrize("setting", ["MAIL_OAUTH2_SCOPE", "MAIL_OAUTH2_MECHANISM"])
def test_the_optional_settings_alone_are_refused(setting: str) -> None:
    with pytest.raises(ConfigError, match=f"^{setting}: "):
        MailConfig.from_mapping({setting: "XOAUTH2"})


def test_https_and_loopback_http_token_urls_are_accepted(ca_file: str) -> None:
    for url in (
        "https://oauth2.googleapis.com/token",
        "https://login.microsoftonline.com/t/oauth2/v2.0/token",
        "http://localhost:8080/token",
        "http://[::1]:1/token",
    ):
        config = MailConfig.from_mapping({**oauth_settings(TokenServer(), 587, ca_file), "MAIL_OAUTH2_TOKEN_URL": url})
        assert config.oauth2() is not None and config.oauth2_mechanism is None
    public = {k: v for k, v in oauth_settings(TokenServer(), 587, ca_file).items() if k != "MAIL_OAUTH2_CLIENT_SECRET"}
    creds = MailConfig.from_mapping(public).oauth2()  # a public client has no secret
    assert creds is not None and creds.client_secret is None


def test_the_service_refuses_bad_oauth2_settings_by_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ca_file: str
) -> None:
    from mailsvc.settings import load_settings

    monkeypatch.chdir(tmp_path)
    for key, value in oauth_settings(TokenServer(port=9), 587, ca_file, MAIL_PASSWORD="pw").items():
        monkeypatch.setenv(key, str(value))
    with pytest.raises(SystemExit) as exc:
        load_settings()
    assert "MAIL_PASSWORD" in str(exc.value.code) and CLIENT_SECRET not in str(exc.value.code)


async def test_mail_send_through_the_quart_extension(server_ssl_context: ssl.SSLContext, ca_file: str) -> None:
    async with token_server() as tokens:
        relay = OAuthRelay(tokens=tokens)
        async with oauth_relay(relay, server_ssl_context) as port:
            app = Quart(__name__)
            app.config.update(oauth_settings(tokens, port, ca_file))
            mail = Mail(app)
            async with app.test_app():
                result = await mail.send(Message("Welcome", recipients=["ann@example.com"], body="Hi"))
    assert result.ok and tokens.refreshes == 1
    assert [m for m, _, _ in relay.attempts] == ["XOAUTH2"]
    assert relay.received[0].mail_from == MAILBOX


async def test_the_service_worker_delivers_with_oauth2_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server_ssl_context: ssl.SSLContext, ca_file: str
) -> None:
    """The environment -> Settings -> create_app -> POST /api/messages -> outbox -> worker -> XOAUTH2."""
    from mailsvc.settings import load_settings

    monkeypatch.chdir(tmp_path)
    async with token_server() as tokens:
        relay = OAuthRelay(tokens=tokens)
        async with oauth_relay(relay, server_ssl_context) as port:
            env = oauth_settings(tokens, port, ca_file)
            env.update(
                MAILSVC_API_KEYS="k-test",
                MAILSVC_DATABASE_URL=f"sqlite:///{tmp_path / 'outbox.sqlite3'}",
                MAILSVC_POLL_INTERVAL="0.02",
            )
            for key, value in env.items():
                monkeypatch.setenv(key, str(value))
            settings = load_settings()
            app = create_app(settings.mail_config(), settings.service_config())
            async with app.test_app() as test_app:
                client = test_app.test_client()
                answer = await client.post(
                    "/api/messages",
                    json={"to": "ann@example.com", "subject": "Hi", "text": "Hello"},
                    headers={"Authorization": "Bearer k-test"},
                )
                assert answer.status_code == 202, await answer.get_data()
                id_ = (await answer.get_json())["id"]
                outbox = services(app).open_outbox()
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 20
                while (status := await outbox.status(id_)).state != "delivered":
                    assert loop.time() < deadline, status
                    await asyncio.sleep(0.02)
    assert [(m, u) for m, u, _ in relay.attempts] == [("XOAUTH2", MAILBOX)]
    assert tokens.refreshes == 1 and len(relay.received) == 1


def test_dev_mode_ignores_the_oauth2_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ca_file: str) -> None:
    """With no MAIL_SERVER, mail goes to the dev inbox in plain SMTP on loopback: no token goes there."""
    from mailsvc.settings import load_settings

    monkeypatch.chdir(tmp_path)
    for key, value in oauth_settings(TokenServer(port=9), 587, ca_file).items():
        if key != "MAIL_SERVER":
            monkeypatch.setenv(key, str(value))
    config = load_settings().mail_config()
    assert config.oauth2() is None and config.username is None and not config.use_tls


def test_send_sync_in_fresh_loops_reuses_the_token(server_ssl_context: ssl.SSLContext, ca_file: str) -> None:
    """``mail.send_sync`` runs a loop per call: the token (not the loop-bound lock) outlives each loop."""
    ready: queue.Queue[tuple[TokenServer, OAuthRelay, int]] = queue.Queue()
    stop = threading.Event()

    async def serve() -> None:
        async with token_server() as tokens:
            relay = OAuthRelay(tokens=tokens)
            async with oauth_relay(relay, server_ssl_context) as port:
                ready.put((tokens, relay, port))
                while not stop.is_set():
                    await asyncio.sleep(0.01)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    try:
        tokens, relay, port = ready.get(timeout=10)
        mail = Mail(config=mail_config(tokens, port, ca_file))
        assert mail.send_sync(msg()).ok and mail.send_sync(msg()).ok
    finally:
        stop.set()
        thread.join(10)
    assert tokens.refreshes == 1 and len(relay.attempts) == 2 and len(relay.received) == 2
