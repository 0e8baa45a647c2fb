"""The service's settings: the one place (with asgi.py) that reads the environment.

Every key is an environment variable (or a line in ``.env``). Flask-Mail's
``MAIL_*`` names configure delivery; ``MAILSVC_*`` names configure the service.
Nothing in ``mailsvc/`` imports this module: the app factory and the CLI receive
a :class:`Settings` object as data.

Why every field is ``env_field(Model, "name")``: the default and the bounds of each
setting live once, on the config model (``mailsvc/config.py``) that the library,
the worker and the tests also build directly. Only the few settings whose
environment form must differ say so here, beside the reason.
``tests/test_settings_source.py`` fails if a setting and its model field drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailsvc.config import (
    MAIL_KEYS,
    MailConfig,
    ServiceConfig,
    WebConfig,
    config_error_from,
    env_field,
    service_env_name,
)

M, S, W = MailConfig, ServiceConfig, WebConfig

# Settings whose environment form differs from the model field, and why (checked by the tests).
DIFFERS_FROM_MODEL = {
    "MAIL_SERVER": "unset means the embedded dev inbox; the library's default is localhost",
    "MAIL_DEFAULT_SENDER": "the service always needs a From; the library (like Flask-Mail) has none",
    "MAILSVC_TEMPLATES": "the templates beside this file, wherever the process is started",
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
    MAIL_DEFAULT_SENDER: str | None = env_field(M, "default_sender", default="mailsvc@localhost.localdomain")
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
    MAIL_TRANSPORT: str | None = env_field(M, "transport")  # "package.module:factory" instead of SMTP

    # Service: outbox, workers, dev inbox
    MAILSVC_DATABASE_URL: str = env_field(S, "database_url")
    MAILSVC_DEV_SMTP_PORT: int = env_field(S, "dev_smtp_port")
    MAILSVC_DEV_INBOX_MAX: int = env_field(S, "dev_inbox_max")
    MAILSVC_WORKERS: int = env_field(S, "workers")
    MAILSVC_TEMPLATES: Path = env_field(S, "templates", default=Path(__file__).resolve().parent / "templates")
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
    MAILSVC_RETENTION_DAYS: float = env_field(S, "retention_days")

    # The HTTP server: slow and abusive clients
    MAILSVC_KEEP_ALIVE_TIMEOUT: float = env_field(S, "keep_alive_timeout")
    MAILSVC_BODY_TIMEOUT: float = env_field(S, "body_timeout")
    MAILSVC_READ_TIMEOUT: float = env_field(S, "read_timeout")
    MAILSVC_MAX_HEADER_BYTES: int = env_field(S, "max_header_bytes")
    MAILSVC_MAX_CONNECTIONS: int = env_field(S, "max_connections")

    # Web layer: who may send, how much
    MAILSVC_API_KEYS: SecretStr = SecretStr("")  # comma-separated Bearer keys
    MAILSVC_ALLOW_ANONYMOUS: bool = env_field(W, "allow_anonymous")
    MAILSVC_SECRET_KEY: SecretStr | None = env_field(W, "secret_key")
    MAILSVC_SECURE_COOKIES: bool | None = env_field(W, "secure_cookies")
    MAILSVC_ALLOW_SENDER: bool = env_field(W, "allow_sender")
    MAILSVC_ALLOWED_DOMAINS: str = ""  # comma-separated
    MAILSVC_MAX_REQUEST_BYTES: int = env_field(W, "max_request_bytes")
    MAILSVC_MAX_ATTACHMENT_BYTES: int = env_field(W, "max_attachment_bytes")
    MAILSVC_MAX_RECIPIENTS: int = env_field(W, "max_recipients")
    MAILSVC_MAX_BATCH: int = env_field(W, "max_batch")
    MAILSVC_MAX_RENDER_CHARS: int = env_field(W, "max_render_chars")
    MAILSVC_MAX_TEMPLATE_CHARS: int = env_field(W, "max_template_chars")
    MAILSVC_RENDER_SECONDS: float = env_field(W, "render_seconds")
    MAILSVC_RATE_LIMIT: float = env_field(W, "rate_limit")
    MAILSVC_RATE_BURST: int = env_field(W, "rate_burst")

    def mail_config(self) -> MailConfig:
        """The delivery config; in dev mode it points at the embedded inbox on 127.0.0.1."""
        data = {k: getattr(self, k) for k in MAIL_KEYS}
        if self.MAIL_SERVER is None:
            data.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=self.MAILSVC_DEV_SMTP_PORT)
        return MailConfig.from_mapping(data)

    @property
    def dev_mode(self) -> bool:
        return self.MAIL_SERVER is None

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
        return ServiceConfig(**self._fields_of(ServiceConfig), dev_mode=self.dev_mode, web=self.web_config())


def load_settings(**overrides: object) -> Settings:
    """Build Settings or exit with one line naming the bad setting."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
        settings.mail_config()
        settings.service_config()
    except ValidationError as exc:
        raise SystemExit(f"mailsvc: configuration error: {config_error_from(exc, {})}") from None
    except ValueError as exc:  # ConfigError
        raise SystemExit(f"mailsvc: configuration error: {exc}") from None
    return settings
