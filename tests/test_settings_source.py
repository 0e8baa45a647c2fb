"""Each setting's default and bounds are written once, on its config model; settings.py derives them.

A setting added to a model without an environment name, or an environment setting
whose default or bounds drift from its model field, fails here by name.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic.fields import FieldInfo

from mailsvc.config import MAIL_KEYS, SERVICE_NAMES, MailConfig, ServiceConfig, WebConfig, service_env_name
from settings import DIFFERS_FROM_MODEL, Settings, load_settings

DERIVED = {"dev_mode", "web"}  # ServiceConfig fields computed from other settings, not set on their own
LIBRARY_NAMES = {env: lib for lib, env in SERVICE_NAMES.items()}  # MAILSVC_DKIM_* -> MAIL_DKIM_*


def model_field(setting: str) -> FieldInfo:
    setting = LIBRARY_NAMES.get(setting, setting)
    if setting in MAIL_KEYS:
        return MailConfig.model_fields[MAIL_KEYS[setting]]
    name = setting.removeprefix("MAILSVC_").lower()
    for model in (ServiceConfig, WebConfig):
        if name in model.model_fields:
            return model.model_fields[name]
    raise AssertionError(f"{setting} has no field on MailConfig, ServiceConfig or WebConfig")


def test_every_setting_is_a_model_field() -> None:
    for setting in Settings.model_fields:
        model_field(setting)


def test_every_model_field_is_a_setting() -> None:
    names = set(Settings.model_fields)
    missing = [SERVICE_NAMES.get(k, k) for k in MAIL_KEYS if SERVICE_NAMES.get(k, k) not in names]
    for model in (ServiceConfig, WebConfig):
        missing += [service_env_name(f) for f in model.model_fields if f not in DERIVED]
    missing = [m for m in missing if m not in names]
    assert not missing, f"config fields with no environment setting: {missing}"


@pytest.mark.parametrize("setting", sorted(Settings.model_fields))
def test_defaults_and_bounds_are_the_models(setting: str) -> None:
    ours, theirs = Settings.model_fields[setting], model_field(setting)
    if setting in DIFFERS_FROM_MODEL:
        assert ours.default != theirs.default or ours.annotation != theirs.annotation, (
            f"{setting} is listed as different from its model field but is the same: drop it from the list"
        )
        return
    assert ours.default == theirs.default, f"{setting}: default {ours.default!r} != model's {theirs.default!r}"
    assert ours.metadata == theirs.metadata, f"{setting}: bounds {ours.metadata} != model's {theirs.metadata}"


@pytest.mark.parametrize(
    "env, setting",
    [
        ({"MAILSVC_MAX_BATCH": "0"}, "MAILSVC_MAX_BATCH"),
        ({"MAILSVC_MAX_RENDER_CHARS": "10"}, "MAILSVC_MAX_RENDER_CHARS"),
        ({"MAILSVC_RATE_BURST": "many"}, "MAILSVC_RATE_BURST"),
        ({"MAILSVC_WORKERS": "65"}, "MAILSVC_WORKERS"),
        ({"MAILSVC_WORKER_METRICS_BIND": "127.0.0.1"}, "MAILSVC_WORKER_METRICS_BIND"),
        ({"MAILSVC_RETRY_JITTER": "1"}, "MAILSVC_RETRY_JITTER"),
        ({"MAIL_POOL_SIZE": "0"}, "MAIL_POOL_SIZE"),
        ({"MAILSVC_MAX_HEADER_BYTES": "100"}, "MAILSVC_MAX_HEADER_BYTES"),
        ({"MAILSVC_MAX_CONNECTIONS": "-1"}, "MAILSVC_MAX_CONNECTIONS"),
        # hypercorn's read timeout also runs while a request renders: it must outlast the render budget.
        ({"MAILSVC_READ_TIMEOUT": "4", "MAILSVC_RENDER_SECONDS": "5"}, "MAILSVC_READ_TIMEOUT"),
    ],
)
def test_a_bound_from_the_model_is_enforced_on_the_environment(
    env: dict[str, str], setting: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as exc:
        load_settings()
    assert setting in str(exc.value)


def test_environment_values_reach_the_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for k, v in {
        "MAILSVC_MAX_RENDER_CHARS": "4096",
        "MAILSVC_API_KEYS": " k1 , k2,,",
        "MAILSVC_ALLOWED_DOMAINS": "example.com, shop.example",
        "MAILSVC_CLAIM_BATCH": "7",
    }.items():
        monkeypatch.setenv(k, v)
    service = load_settings().service_config()
    assert service.web.max_render_chars == 4096 and service.claim_batch == 7
    assert [k.get_secret_value() for k in service.web.api_keys] == ["k1", "k2"]
    assert service.web.allowed_domains == ("example.com", "shop.example")


def test_a_typo_in_the_environment_is_reported_with_the_nearest_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("MAILSVC_WORKES=2\n# MAIL_COMMENTED=1\n")
    monkeypatch.setenv("MAIL_USE_TSL", "true")
    with caplog.at_level("WARNING", logger="mailsvc"):
        load_settings()
    assert "MAIL_USE_TSL is not a mailsvc setting and is ignored (did you mean MAIL_USE_TLS?)" in caplog.text
    assert "MAILSVC_WORKES is not a mailsvc setting and is ignored (did you mean MAILSVC_WORKERS?)" in caplog.text
    assert "MAIL_COMMENTED" not in caplog.text


def test_a_typo_in_app_config_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    from quart import Quart

    from mailsvc import Mail

    app = Quart(__name__)
    app.config.update(MAIL_SERVER="127.0.0.1", MAIL_DEFUALT_SENDER="shop@example.com")
    with caplog.at_level("WARNING", logger="mailsvc"):
        Mail(app)
    assert "MAIL_DEFUALT_SENDER is not a mailsvc setting and is ignored (did you mean MAIL_DEFAULT_SENDER?)" in (
        caplog.text
    )
