"""Who may send: the open-relay guard, keys in constant time, per-key buckets, logs without secrets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import SecretStr

from mailsvc.app import create_app
from mailsvc.config import MailConfig, WebConfig
from mailsvc.errors import ConfigError
from mailsvc.web.auth import KeyRing, key_id
from mailsvc.web.ratelimit import RateLimiter
from tests.servers import RecordingHandler
from tests.webkit import AUTH, KEY, running, service_config


def test_real_relay_without_keys_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        create_app(MailConfig(server="smtp.example.com"), service_config(tmp_path, api_keys=()))
    assert err.value.setting == "MAILSVC_API_KEYS" and "MAILSVC_ALLOW_ANONYMOUS" in str(err.value)


def test_anonymous_only_on_purpose(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mailsvc.web"):
        create_app(MailConfig(server="smtp.example.com"), service_config(tmp_path, api_keys=(), allow_anonymous=True))
    assert "accept mail from anyone" in caplog.text


def test_dev_mode_runs_open_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mailsvc.web"):
        create_app(MailConfig(server="127.0.0.1"), service_config(tmp_path, api_keys=(), dev_mode=True))
    assert "open" in caplog.text


def test_keyring() -> None:
    ring = KeyRing.from_config(WebConfig(api_keys=(SecretStr("alpha"), SecretStr("beta"))))
    beta, alpha = ring.identify("beta"), ring.identify("alpha")
    assert beta is not None and alpha is not None
    assert (beta.id, beta.tenant) == (key_id("beta"), key_id("beta")) and alpha.tenant == key_id("alpha")
    assert ring.identify("alph") is None and ring.identify("") is None and ring.identify("bêta\udc80") is None
    assert not ring.open and KeyRing(()).open


def test_token_bucket() -> None:
    now = [0.0]
    rl = RateLimiter(rate=2.0, burst=3, now=lambda: now[0])
    assert [rl.take("a") for _ in range(3)] == [None, None, None]
    assert rl.take("a") == pytest.approx(0.5)
    assert rl.take("b") is None  # keys are independent
    now[0] = 0.5
    assert rl.take("a") is None and rl.take("a") is not None
    assert RateLimiter(rate=0, burst=1).take("x") is None


async def test_logs_name_ids_never_bodies_or_keys(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        async with running(smtp_port, handler, tmp_path, workers=0) as svc:
            r = await svc.client.post(
                "/api/messages",
                headers=AUTH,
                json={"to": "a@example.com", "subject": "Secret plans", "text": "the body text"},
            )
            await svc.client.post(
                "/api/messages",
                headers={"Authorization": "Bearer guess-key"},
                json={"to": "a@example.com", "subject": "s", "text": "t"},
            )
            id_ = (await r.get_json())["id"]
    accepted = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("accepted ")]
    assert len(accepted) == 1 and f"id={id_}" in accepted[0] and f"key={key_id(KEY)}" in accepted[0]
    assert KEY not in caplog.text and "guess-key" not in caplog.text
    assert "the body text" not in caplog.text and "Secret plans" not in caplog.text
