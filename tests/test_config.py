"""MailConfig from Flask-Mail keys: contradictions fail at load naming the setting; secrets never leak."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr
from quart import Quart

from mailsvc import ConfigError, Mail, MailConfig

SECRET = "hunter2-app-password"


@pytest.mark.parametrize(
    "keys, setting",
    [
        ({"MAIL_USE_TLS": True, "MAIL_USE_SSL": True}, "MAIL_USE_TLS/MAIL_USE_SSL"),
        ({"MAIL_PORT": 0}, "MAIL_PORT"),
        ({"MAIL_PORT": 70000}, "MAIL_PORT"),
        ({"MAIL_PORT": "smtp"}, "MAIL_PORT"),
        ({"MAIL_DEFAULT_SENDER": "not an address"}, "MAIL_DEFAULT_SENDER"),
        ({"MAIL_DEFAULT_SENDER": ("Shop", "nope@")}, "MAIL_DEFAULT_SENDER"),
        ({"MAIL_SERVER": "smtp.example.com", "MAIL_USERNAME": "me", "MAIL_PASSWORD": SECRET}, "MAIL_PASSWORD"),
        ({"MAIL_SERVER": "smtp.example.com\r\nX: y"}, "MAIL_SERVER"),
        ({"MAIL_CA_FILE": "/nonexistent/ca.pem"}, "MAIL_CA_FILE"),
        ({"MAIL_POOL_SIZE": 0}, "MAIL_POOL_SIZE"),
        ({"MAIL_TIMEOUT": 0}, "MAIL_TIMEOUT"),
        ({"MAIL_MAX_EMAILS": 0}, "MAIL_MAX_EMAILS"),
    ],
)
def test_bad_settings_name_the_setting(keys: dict[str, object], setting: str) -> None:
    with pytest.raises(ConfigError) as err:
        MailConfig.from_mapping(keys)
    assert err.value.setting == setting
    assert str(err.value).startswith(f"{setting}: ")
    assert "\n" not in str(err.value)
    assert SECRET not in str(err.value)
    # the same keys through app.config fail when the extension is set up, not at first send
    app = Quart(__name__)
    app.config.update(keys)
    with pytest.raises(ConfigError):
        Mail(app)


@pytest.mark.parametrize("server", ["127.0.0.1", "localhost", "::1"])
def test_plaintext_password_allowed_to_loopback_only(server: str) -> None:
    cfg = MailConfig.from_mapping({"MAIL_SERVER": server, "MAIL_USERNAME": "me", "MAIL_PASSWORD": SECRET})
    assert cfg.password is not None and cfg.password.get_secret_value() == SECRET


@pytest.mark.parametrize("mode", ["MAIL_USE_TLS", "MAIL_USE_SSL", "MAIL_ALLOW_PLAINTEXT_AUTH"])
def test_password_to_remote_host_needs_tls_or_explicit_opt_in(mode: str) -> None:
    port = {"MAIL_USE_SSL": 465, "MAIL_USE_TLS": 587}.get(mode, 25)
    cfg = MailConfig.from_mapping(
        {"MAIL_SERVER": "smtp.example.com", "MAIL_PORT": port, "MAIL_PASSWORD": SECRET, mode: True}
    )
    assert cfg.password is not None


def test_gmail_style_config_and_defaults(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed at load")
    cfg = MailConfig.from_mapping(
        {
            "MAIL_SERVER": "smtp.gmail.com",
            "MAIL_PORT": 465,
            "MAIL_USE_SSL": True,
            "MAIL_USERNAME": "me@gmail.com",
            "MAIL_PASSWORD": SECRET,
            "MAIL_DEFAULT_SENDER": ("Shop", "me@gmail.com"),
            "MAIL_CA_FILE": str(ca),
            "UNRELATED_KEY": 1,
            "MAIL_MAX_EMAILS": None,
        }
    )
    assert (cfg.port, cfg.use_ssl, cfg.use_tls, cfg.encrypted) == (465, True, False, True)
    assert cfg.validate_certs and cfg.ca_file == ca and cfg.max_emails is None
    assert cfg.default_sender == ("Shop", "me@gmail.com")
    defaults = MailConfig()
    assert (defaults.port, defaults.timeout, defaults.pool_size, defaults.validate_certs) == (25, 30.0, 4, True)
    assert MailConfig.from_mapping(cfg.to_mapping()) == cfg


def test_config_is_frozen() -> None:
    cfg = MailConfig()
    with pytest.raises(ValueError):
        cfg.port = 26  # type: ignore[misc]


def test_password_never_in_repr_or_str_of_mail_config() -> None:
    cfg = MailConfig(server="smtp.example.com", use_tls=True, username="me", password=SecretStr(SECRET))
    for text in (repr(cfg), str(cfg), repr(cfg.to_mapping()), str(cfg.model_dump()), cfg.model_dump_json()):
        assert SECRET not in text
    assert cfg.password is not None and cfg.password.get_secret_value() == SECRET


def test_password_never_in_repr_or_str_of_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("MAIL_PASSWORD", SECRET)
    monkeypatch.setenv("MAIL_SERVER", "smtp.example.com")
    monkeypatch.setenv("MAIL_USE_TLS", "true")
    from settings import Settings

    s = Settings()
    assert SECRET not in repr(s) and SECRET not in str(s)
    cfg = s.mail_config()
    assert SECRET not in repr(cfg)
    assert cfg.password is not None and cfg.password.get_secret_value() == SECRET
    assert (cfg.server, cfg.use_tls) == ("smtp.example.com", True)


@pytest.mark.parametrize(
    "env, setting",
    [
        ({"MAIL_USE_TLS": "true", "MAIL_USE_SSL": "true"}, "MAIL_USE_TLS/MAIL_USE_SSL"),
        ({"MAIL_PORT": "0"}, "MAIL_PORT"),
        ({"MAIL_PORT": "70000"}, "MAIL_PORT"),
        ({"MAIL_DEFAULT_SENDER": "nobody at all"}, "MAIL_DEFAULT_SENDER"),
        ({"MAIL_SERVER": "smtp.example.com", "MAIL_PASSWORD": SECRET}, "MAIL_PASSWORD"),
    ],
)
def test_settings_fail_at_startup_with_one_line(
    env: dict[str, str], setting: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from settings import load_settings

    with pytest.raises(SystemExit) as err:
        load_settings()
    text = str(err.value)
    assert setting in text and "\n" not in text and SECRET not in text
