"""The service's settings, read from the environment: the only module in ``mailsvc/`` that reads it.

Every key is an environment variable (or a line in ``.env``). Flask-Mail's
``MAIL_*`` names configure delivery; ``MAILSVC_*`` names configure the service.
The app factory, the worker and the library never import this module: they
receive config models as data. A project's own ``settings.py`` (the one beside
this repository's ``templates/``) builds on it, and the CLI falls back to it when
there is none, so an installed wheel runs from any directory on the environment alone.

Why every field is ``env_field(Model, "name")``: the default and the bounds of each
setting live once, on the config model (``mailsvc/config.py``) that the library,
the worker and the tests also build directly. Only the few settings whose
environment form must differ say so here, beside the reason.
``tests/test_settings_source.py`` fails if a setting and its model field drift apart.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from .addresses import AddressRules, parse_address
from .config import (
    MAIL_KEYS,
    SERVICE_NAMES,
    HostPort,
    LogFormat,
    MailConfig,
    ServiceConfig,
    WebConfig,
    config_error_from,
    env_field,
    service_env_name,
    unknown_settings,
)
from .dburl import dev_outbox_url
from .errors import ConfigError
from .relayconfig import load_relays
from .templatepaths import check_template_folder
from .webhookconfig import WebhookEndpoint

M, S, W = MailConfig, ServiceConfig, WebConfig
DEV_SENDER = "mailsvc@localhost.localdomain"  # dev mode's From when none is set: it only reaches the dev inbox
DEV_IGNORES = (
    "MAIL_USE_TLS",
    "MAIL_USE_SSL",
    "MAIL_USERNAME",
    "MAIL_PASSWORD",
    "MAIL_OAUTH2_TOKEN_URL",
    "MAIL_OAUTH2_CLIENT_ID",
    "MAIL_OAUTH2_CLIENT_SECRET",
    "MAIL_OAUTH2_REFRESH_TOKEN",
    "MAIL_OAUTH2_SCOPE",
    "MAIL_OAUTH2_MECHANISM",
)
log = logging.getLogger("mailsvc")

# Settings whose environment form differs from the model field, and why (checked by the tests).
DIFFERS_FROM_MODEL = {
    "MAIL_SERVER": "unset means the embedded dev inbox; the library's default is localhost",
    "MAILSVC_API_KEYS": "comma-separated in the environment, a tuple of secrets on the model",
    "MAILSVC_ALLOWED_DOMAINS": "comma-separated in the environment, a tuple on the model",
}


class Settings(BaseSettings):
    """Environment-driven settings; contradictions fail at start-up naming the setting."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=True)

    # Delivery (Flask-Mail names). MAIL_SERVER unset = embedded dev inbox.
    MAIL_SERVER: str | None = env_field(M, "server", default=None)
    MAIL_PORT: int = env_field(M, "port")
    MAIL_USE_TLS: bool = env_field(M, "use_tls")
    MAIL_USE_SSL: bool = env_field(M, "use_ssl")
    MAIL_USERNAME: str | None = env_field(M, "username")
    MAIL_PASSWORD: SecretStr | None = env_field(M, "password")
    MAIL_DEFAULT_SENDER: str | None = env_field(M, "default_sender")
    MAIL_MAX_EMAILS: int | None = env_field(M, "max_emails")
    MAIL_SUPPRESS_SEND: bool = env_field(M, "suppress_send")
    MAIL_ASCII_ATTACHMENTS: bool = env_field(M, "ascii_attachments")
    MAIL_TIMEOUT: float = env_field(M, "timeout")
    MAIL_VALIDATE_CERTS: bool = env_field(M, "validate_certs")
    MAIL_CA_FILE: Path | None = env_field(M, "ca_file")
    MAIL_POOL_SIZE: int = env_field(M, "pool_size")
    MAIL_MESSAGE_ID_DOMAIN: str | None = env_field(M, "message_id_domain")
    MAIL_LOCAL_HOSTNAME: str | None = env_field(M, "local_hostname")
    MAIL_ALLOW_PLAINTEXT_AUTH: bool = env_field(M, "allow_plaintext_auth")
    MAIL_DEBUG: bool = env_field(M, "debug")
    MAIL_ADDRESS_RULES: AddressRules = env_field(M, "address_rules")
    MAIL_TRANSPORT: str | None = env_field(M, "transport")  # "package.module:factory" (or "ses") instead of SMTP
    MAIL_SES_REGION: str | None = env_field(M, "ses_region")
    MAIL_SES_ENDPOINT_URL: str | None = env_field(M, "ses_endpoint_url")
    MAIL_SES_MAX_SEND_RATE: float | None = env_field(M, "ses_max_send_rate")
    MAIL_SES_CONFIGURATION_SET: str | None = env_field(M, "ses_configuration_set")
    MAIL_SES_MAX_RECIPIENTS: int = env_field(M, "ses_max_recipients")

    # OAuth2 instead of MAIL_PASSWORD (XOAUTH2/OAUTHBEARER; MAIL_USERNAME is the mailbox)
    MAIL_OAUTH2_TOKEN_URL: str | None = env_field(M, "oauth2_token_url")
    MAIL_OAUTH2_CLIENT_ID: str | None = env_field(M, "oauth2_client_id")
    MAIL_OAUTH2_CLIENT_SECRET: SecretStr | None = env_field(M, "oauth2_client_secret")
    MAIL_OAUTH2_REFRESH_TOKEN: SecretStr | None = env_field(M, "oauth2_refresh_token")
    MAIL_OAUTH2_SCOPE: str | None = env_field(M, "oauth2_scope")
    MAIL_OAUTH2_MECHANISM: str | None = env_field(M, "oauth2_mechanism")  # checked (any case) by MailConfig

    # DKIM signing (read as MailConfig's MAIL_DKIM_*: config.SERVICE_NAMES): one domain, and/or a JSON file of several
    MAILSVC_DKIM_DOMAIN: str | None = env_field(M, "dkim_domain")
    MAILSVC_DKIM_SELECTOR: str | None = env_field(M, "dkim_selector")
    MAILSVC_DKIM_KEY_FILE: Path | None = env_field(M, "dkim_key_file")
    MAILSVC_DKIM_KEYS_FILE: Path | None = env_field(M, "dkim_keys_file")  # {"domain": {"selector", "key_file"}}

    # Service: outbox, workers, dev inbox
    MAILSVC_DATABASE_URL: str = env_field(S, "database_url")
    MAILSVC_DEV_SMTP_PORT: int = env_field(S, "dev_smtp_port")
    MAILSVC_DEV_INBOX_MAX: int = env_field(S, "dev_inbox_max")
    MAILSVC_WORKERS: int = env_field(S, "workers")
    MAILSVC_WORKER_PROCESS: bool | None = env_field(S, "worker_process")  # unset: a child when a core is free
    MAILSVC_TEMPLATES: Path | None = env_field(S, "templates")  # unset: the packaged templates only
    MAILSVC_MAX_PENDING: int = env_field(S, "max_pending")
    MAILSVC_IDEMPOTENCY_TTL: float = env_field(S, "idempotency_ttl")
    MAILSVC_LEASE_SECONDS: float = env_field(S, "lease_seconds")
    MAILSVC_CLAIM_BATCH: int = env_field(S, "claim_batch")
    MAILSVC_WORKER_CONCURRENCY: int = env_field(S, "worker_concurrency")
    MAILSVC_POLL_INTERVAL: float = env_field(S, "poll_interval")
    MAILSVC_RETRY_FIRST: float = env_field(S, "retry_first")
    MAILSVC_RETRY_MAX: float = env_field(S, "retry_max")
    MAILSVC_RETRY_LIFETIME: float = env_field(S, "retry_lifetime")
    MAILSVC_RETRY_JITTER: float = env_field(S, "retry_jitter")
    MAILSVC_RELAY_BACKOFF: float = env_field(S, "relay_backoff")
    MAILSVC_RELAY_BACKOFF_MAX: float = env_field(S, "relay_backoff_max")
    MAILSVC_RELAYS_FILE: Path | None = env_field(S, "relays_file")  # several relays and routes (JSON)
    MAILSVC_RETENTION_DAYS: float = env_field(S, "retention_days")
    MAILSVC_BOUNCE_DOMAIN: str | None = env_field(S, "bounce_domain")  # VERP return paths bounces+<token>@it
    MAILSVC_BOUNCE_LISTEN: str | None = env_field(S, "bounce_listen")  # host:port: the listener inside serve
    MAILSVC_BOUNCE_MAX_BYTES: int = env_field(S, "bounce_max_bytes")

    # The HTTP server: slow and abusive clients
    MAILSVC_KEEP_ALIVE_TIMEOUT: float = env_field(S, "keep_alive_timeout")
    MAILSVC_BODY_TIMEOUT: float = env_field(S, "body_timeout")
    MAILSVC_READ_TIMEOUT: float = env_field(S, "read_timeout")
    MAILSVC_MAX_HEADER_BYTES: int = env_field(S, "max_header_bytes")
    MAILSVC_MAX_CONNECTIONS: int = env_field(S, "max_connections")
    MAILSVC_METRICS_BIND: HostPort | None = env_field(S, "metrics_bind")  # host:port: /metrics there, without a key
    MAILSVC_WORKER_METRICS_BIND: HostPort | None = env_field(S, "worker_metrics_bind")  # the worker process's
    MAILSVC_LOG_FORMAT: LogFormat = env_field(S, "log_format")
    # Webhooks: a JSON list of {"name", "url", "secret": "whsec_...", "events": [...], "batch": n}
    MAILSVC_WEBHOOKS: tuple[WebhookEndpoint, ...] = env_field(S, "webhooks")
    MAILSVC_WEBHOOK_GIVE_UP: float = env_field(S, "webhook_give_up")
    MAILSVC_WEBHOOK_TIMEOUT: float = env_field(S, "webhook_timeout")
    MAILSVC_WEBHOOK_CONCURRENCY: int = env_field(S, "webhook_concurrency")
    MAILSVC_WEBHOOK_RETRY_FIRST: float = env_field(S, "webhook_retry_first")

    # Web layer: who may send, how much
    MAILSVC_API_KEYS: SecretStr = SecretStr("")  # comma-separated Bearer keys
    MAILSVC_API_KEYS_FILE: Path | None = env_field(W, "api_keys_file")  # JSON: tenants with keys and scopes
    MAILSVC_ALLOW_ANONYMOUS: bool = env_field(W, "allow_anonymous")
    MAILSVC_SECRET_KEY: SecretStr | None = env_field(W, "secret_key")
    MAILSVC_PUBLIC_URL: str | None = env_field(W, "public_url")  # base of one-click unsubscribe links
    MAILSVC_SECURE_COOKIES: bool | None = env_field(W, "secure_cookies")
    MAILSVC_ALLOW_SENDER: bool = env_field(W, "allow_sender")
    MAILSVC_ALLOWED_DOMAINS: str = ""  # comma-separated
    MAILSVC_MAX_REQUEST_BYTES: int = env_field(W, "max_request_bytes")
    MAILSVC_MAX_ATTACHMENT_BYTES: int = env_field(W, "max_attachment_bytes")
    MAILSVC_MAX_RECIPIENTS: int = env_field(W, "max_recipients")
    MAILSVC_MAX_BATCH: int = env_field(W, "max_batch")
    MAILSVC_MAX_RENDER_CHARS: int = env_field(W, "max_render_chars")
    MAILSVC_SCHEDULE_HORIZON: float = env_field(W, "schedule_horizon")  # seconds a send_at may be ahead
    MAILSVC_MAX_TEMPLATE_CHARS: int = env_field(W, "max_template_chars")
    MAILSVC_RENDER_SECONDS: float = env_field(W, "render_seconds")
    MAILSVC_RATE_LIMIT: float = env_field(W, "rate_limit")
    MAILSVC_RATE_BURST: int = env_field(W, "rate_burst")
    MAILSVC_AUTH_FAILURE_LIMIT: int = env_field(W, "auth_failure_limit")

    def mail_config(self) -> MailConfig:
        """The delivery config; in dev mode it points at the embedded inbox on 127.0.0.1, and only there.

        Dev mode ignores the relay settings a ``.env`` may still hold (TLS, credentials): the dev
        inbox speaks plain SMTP on loopback, and a password has no business going there. With a
        real relay, a From address must be configured: a made-up one would be sent for real.
        """
        data = {k: getattr(self, SERVICE_NAMES.get(k, k)) for k in MAIL_KEYS}
        if self.MAIL_SERVER is None:
            ignored = [k for k in DEV_IGNORES if data.get(k) not in (None, False, "")]
            if ignored:
                log.warning("dev mode: ignoring %s (mail goes to the dev inbox on 127.0.0.1)", ", ".join(ignored))
            data.update({k: None for k in DEV_IGNORES})
            data.update(
                MAIL_SERVER="127.0.0.1",
                MAIL_PORT=self.MAILSVC_DEV_SMTP_PORT,
                MAIL_ADDRESS_RULES="permissive",
                MAIL_DEFAULT_SENDER=self.MAIL_DEFAULT_SENDER or DEV_SENDER,
            )
        try:
            config = MailConfig.from_mapping(data)  # every other setting's problem first, by name
        except ConfigError as exc:  # blame the name this environment used
            raise _renamed(exc) from None
        if self.MAIL_SERVER is not None and not self.MAIL_DEFAULT_SENDER:
            raise ConfigError(
                "MAIL_DEFAULT_SENDER",
                f"required with a real relay (MAIL_SERVER={self.MAIL_SERVER}): set the From address "
                "this relay lets you send as, e.g. MAIL_DEFAULT_SENDER='Shop <shop@example.com>'",
            )
        return config

    def warn_unsigned(self, config: MailConfig) -> None:
        """DKIM keys configured, but not for the default From domain: said once here, and per message in the log."""
        ring = config.dkim_keyring()
        sender = config.default_sender
        if not ring or sender is None:
            return
        domain = parse_address(sender, "MAIL_DEFAULT_SENDER").envelope.rpartition("@")[2]
        if ring.key_for(domain) is None:
            log.warning(
                "DKIM: no key for %s (MAIL_DEFAULT_SENDER's domain; keys for %s): its mail goes out unsigned",
                domain,
                ", ".join(sorted(ring.domains)),
            )

    @property
    def dev_mode(self) -> bool:
        """No relay configured: neither an SMTP server nor a transport of its own (SES) names where mail goes."""
        return self.MAIL_SERVER is None and self.MAIL_TRANSPORT is None

    def _fields_of(self, model: type[BaseModel]) -> dict[str, Any]:
        """The model's fields that are settings, read under their ``MAILSVC_*`` names."""
        names = type(self).model_fields
        return {f: getattr(self, service_env_name(f)) for f in model.model_fields if service_env_name(f) in names}

    def web_config(self) -> WebConfig:
        """Comma-separated lists split here, so the model holds clean tuples."""
        keys = tuple(SecretStr(k.strip()) for k in self.MAILSVC_API_KEYS.get_secret_value().split(",") if k.strip())
        domains = tuple(d.strip() for d in self.MAILSVC_ALLOWED_DOMAINS.split(",") if d.strip())
        return WebConfig(**{**self._fields_of(WebConfig), "api_keys": keys, "allowed_domains": domains})

    def service_config(self) -> ServiceConfig:
        """The service config; dev mode queues into an outbox of its own (``dev_outbox_url``)."""
        fields = self._fields_of(ServiceConfig)
        if self.dev_mode:
            fields["database_url"] = dev_outbox_url(self.MAILSVC_DATABASE_URL)
        return ServiceConfig(**fields, dev_mode=self.dev_mode, web=self.web_config())


_S = TypeVar("_S", bound=Settings)


def _renamed(exc: ConfigError) -> ConfigError:
    """A MailConfig error under the name the environment uses (MAIL_DKIM_KEY_FILE -> MAILSVC_DKIM_KEY_FILE)."""
    text = str(exc)
    for lib, env in SERVICE_NAMES.items():
        text = text.replace(lib, env)
    setting, _, reason = text.partition(": ")
    return ConfigError(setting, reason)


def load_settings(**overrides: object) -> Settings:
    """Build Settings or exit with one line naming the bad setting; warn of names that look like typos."""
    return build_settings(Settings, **overrides)


def build_settings(settings_class: type[_S], **overrides: object) -> _S:
    """:func:`load_settings` for a project's subclass of :class:`Settings` (its own defaults)."""
    for line in unknown_settings(_names_given(), settings_class.model_fields):
        log.warning("%s", line)
    try:
        settings = settings_class(**overrides)  # type: ignore[arg-type]
        settings.warn_unsigned(settings.mail_config())
        settings.service_config()
        check_template_folder(settings.MAILSVC_TEMPLATES)
        load_relays(settings.MAILSVC_RELAYS_FILE, settings.mail_config())  # a bad relays file stops the start
    except ValidationError as exc:
        raise SystemExit(f"mailsvc: configuration error: {config_error_from(exc, {})}") from None
    except ValueError as exc:  # ConfigError
        raise SystemExit(f"mailsvc: configuration error: {exc}") from None
    return settings


def _names_given() -> set[str]:
    """The names in the environment and in ``.env`` (the places Settings reads)."""
    names = set(os.environ)
    env_file = Path(".env")
    if env_file.is_file():
        for line in env_file.read_text(encoding="utf-8", errors="replace").splitlines():
            name = line.strip().removeprefix("export ").split("=", 1)[0].strip()
            if name and not name.startswith("#"):
                names.add(name)
    return names
