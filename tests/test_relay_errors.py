"""Issue 14, friction 4: relay errors that say what is wrong, and which setting to change."""

from __future__ import annotations

import ssl
import time

import pytest

from mailsvc import ConnectionFailedError, DeliveryError, Message, TransportSecurityError
from mailsvc.config import MailConfig
from mailsvc.errors import ConfigError
from tests.helpers import PASSWORD, USER, config, standalone
from tests.servers import Authenticator, RecordingHandler, smtp_server


def msg() -> Message:
    return Message("Hello", recipients=["ann@example.com"], body="hi", sender="shop@example.com")


async def test_a_relay_without_auth_says_so_not_starttls() -> None:
    async with smtp_server(RecordingHandler()) as port:  # no authenticator: no AUTH in EHLO
        async with standalone(config(port, username=USER, password=PASSWORD)) as mail:
            with pytest.raises(DeliveryError) as err:
                await mail.send(msg())
    text = str(err.value)
    assert "does not offer AUTH" in text and "unset MAIL_USERNAME and MAIL_PASSWORD" in text
    assert "does not offer STARTTLS" not in text


async def test_empty_credentials_mean_no_auth_as_in_flask_mail() -> None:
    handler = RecordingHandler()
    async with smtp_server(handler) as port:
        async with standalone(config(port, username="", password="")) as mail:
            assert (await mail.send(msg())).ok
    assert len(handler.received) == 1
    cfg = MailConfig.from_mapping({"MAIL_SERVER": "smtp.example.com", "MAIL_USERNAME": "", "MAIL_PASSWORD": ""})
    assert cfg.username is None and cfg.password is None  # and so no plaintext-password refusal either


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"MAIL_PORT": 465, "MAIL_USE_TLS": True}, "set MAIL_USE_SSL=true and MAIL_USE_TLS=false"),
        ({"MAIL_PORT": 587, "MAIL_USE_SSL": True}, "set MAIL_USE_TLS=true and MAIL_USE_SSL=false"),
        ({"MAIL_PORT": 25, "MAIL_USE_SSL": True}, "set MAIL_USE_TLS=true and MAIL_USE_SSL=false"),
    ],
)
def test_tls_mode_swapped_on_a_well_known_port_fails_at_load(settings: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as err:
        MailConfig.from_mapping({"MAIL_SERVER": "smtp.example.com", **settings})
    assert named in str(err.value)


async def test_implicit_tls_against_a_plain_server_is_named_at_once(ca_file: str) -> None:
    async with smtp_server(RecordingHandler()) as port:  # plain SMTP: it greets in clear text
        started = time.monotonic()
        async with standalone(config(port, use_ssl=True, ca_file=ca_file, timeout=20)) as mail:
            with pytest.raises(TransportSecurityError) as err:
                await mail.send(msg())
        assert time.monotonic() - started < 15  # found from the server's first bytes, not after MAIL_TIMEOUT
    assert "not an implicit-TLS port" in str(err.value) and "MAIL_USE_TLS=true" in str(err.value)


async def test_starttls_against_an_implicit_tls_server_names_the_setting(
    server_ssl_context: ssl.SSLContext, ca_file: str
) -> None:
    """The server waits for a TLS hello, the client for a greeting: the timeout says why and what to set."""
    async with smtp_server(RecordingHandler(), ssl_context=server_ssl_context) as port:
        async with standalone(config(port, use_tls=True, ca_file=ca_file, timeout=2)) as mail:
            with pytest.raises(ConnectionFailedError) as err:
                await mail.send(msg())
    assert "no SMTP greeting came" in str(err.value) and "MAIL_USE_SSL=true" in str(err.value)


async def test_auth_offered_only_after_starttls_hint() -> None:
    async with smtp_server(RecordingHandler(), authenticator=Authenticator(USER, PASSWORD)) as port:
        async with standalone(config(port, username=USER, password=PASSWORD)) as mail:
            with pytest.raises(DeliveryError) as err:
                await mail.send(msg())
    assert "set MAIL_USE_TLS if it offers AUTH only after STARTTLS" in str(err.value)
