"""The service's settings: the one place (with asgi.py) that reads the environment.

Every key is an environment variable (or a line in ``.env``). Flask-Mail's
``MAIL_*`` names configure delivery; ``MAILSVC_*`` names configure the service.
Nothing in ``mailsvc/`` imports this module: the app factory and the CLI receive
a :class:`Settings` object as data.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailsvc.config import MailConfig, ServiceConfig, WebConfig, config_error_from


class Settings(BaseSettings):
    """Environment-driven settings; contradictions fail at start-up naming the setting."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=True)

    # Delivery (Flask-Mail names). MAIL_SERVER unset = embedded dev inbox.
    MAIL_SERVER: str | None = None
    MAIL_PORT: int = Field(default=25, ge=1, le=65535)
    MAIL_USE_TLS: bool = False
    MAIL_USE_SSL: bool = False
    MAIL_USERNAME: str | None = None
    MAIL_PASSWORD: SecretStr | None = None
    MAIL_DEFAULT_SENDER: str | None = "mailsvc@localhost.localdomain"
    MAIL_MAX_EMAILS: int | None = None
    MAIL_SUPPRESS_SEND: bool = False
    MAIL_ASCII_ATTACHMENTS: bool = False
    MAIL_TIMEOUT: float = 30.0
    MAIL_VALIDATE_CERTS: bool = True
    MAIL_CA_FILE: Path | None = None
    MAIL_POOL_SIZE: int = 4
    MAIL_MESSAGE_ID_DOMAIN: str | None = None
    MAIL_LOCAL_HOSTNAME: str | None = None  # the name sent in EHLO; the machine's FQDN when unset
    MAIL_ALLOW_PLAINTEXT_AUTH: bool = False  # AUTH without TLS to a non-loopback relay, on purpose
    MAIL_TRANSPORT: str | None = None  # "package.module:factory" instead of SMTP (e.g. MemoryTransport in tests)

    # Service
    MAILSVC_DATABASE_URL: str = "sqlite:///var/mailsvc.sqlite3"
    MAILSVC_DEV_SMTP_PORT: int = Field(default=8025, ge=1, le=65535)
    MAILSVC_DEV_INBOX_MAX: int = Field(default=1000, ge=1)
    MAILSVC_WORKERS: int = Field(default=1, ge=0, le=64)
    MAILSVC_TEMPLATES: Path = Path(__file__).resolve().parent / "templates"
    # Outbox and delivery workers (seconds; Postfix-like retry schedule)
    MAILSVC_MAX_PENDING: int = Field(default=100_000, ge=1)
    MAILSVC_IDEMPOTENCY_TTL: float = Field(default=24 * 3600.0, gt=0)
    MAILSVC_LEASE_SECONDS: float = Field(default=300.0, gt=0)
    MAILSVC_CLAIM_BATCH: int = Field(default=100, ge=1, le=10_000)
    MAILSVC_WORKER_CONCURRENCY: int = Field(default=100, ge=1, le=10_000)
    MAILSVC_POLL_INTERVAL: float = Field(default=1.0, gt=0)
    MAILSVC_RETRY_FIRST: float = Field(default=300.0, gt=0)
    MAILSVC_RETRY_MAX: float = Field(default=4000.0, gt=0)
    MAILSVC_RETRY_LIFETIME: float = Field(default=5 * 24 * 3600.0, gt=0)
    MAILSVC_RETRY_JITTER: float = Field(default=0.1, ge=0, lt=1)
    MAILSVC_RELAY_BACKOFF: float = Field(default=30.0, gt=0)
    MAILSVC_RELAY_BACKOFF_MAX: float = Field(default=300.0, gt=0)
    MAILSVC_RETENTION_DAYS: float = Field(default=0.0, ge=0)  # PostgreSQL: delete delivered/failed after N days

    # Web layer (who may send, how much)
    MAILSVC_API_KEYS: SecretStr = SecretStr("")  # comma-separated Bearer keys
    MAILSVC_ALLOW_ANONYMOUS: bool = False
    MAILSVC_SECRET_KEY: SecretStr | None = None
    MAILSVC_SECURE_COOKIES: bool | None = None
    MAILSVC_ALLOW_SENDER: bool = False
    MAILSVC_ALLOWED_DOMAINS: str = ""  # comma-separated
    MAILSVC_MAX_REQUEST_BYTES: int = 25 * 1024 * 1024
    MAILSVC_MAX_ATTACHMENT_BYTES: int = 10 * 1024 * 1024
    MAILSVC_MAX_RECIPIENTS: int = 50
    MAILSVC_MAX_BATCH: int = 10_000
    MAILSVC_RATE_LIMIT: float = 50.0
    MAILSVC_RATE_BURST: int = 100

    def mail_config(self) -> MailConfig:
        """The delivery config; in dev mode it points at the embedded inbox on 127.0.0.1."""
        data = {k: v for k, v in self.model_dump().items() if k.startswith("MAIL_")}
        if self.MAIL_SERVER is None:
            data.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=self.MAILSVC_DEV_SMTP_PORT)
        return MailConfig.from_mapping(data)

    @property
    def dev_mode(self) -> bool:
        return self.MAIL_SERVER is None

    def web_config(self) -> WebConfig:
        """Comma-separated lists split here, so the model holds clean tuples."""
        keys = tuple(SecretStr(k.strip()) for k in self.MAILSVC_API_KEYS.get_secret_value().split(",") if k.strip())
        domains = tuple(d.strip() for d in self.MAILSVC_ALLOWED_DOMAINS.split(",") if d.strip())
        return WebConfig(
            api_keys=keys,
            allow_anonymous=self.MAILSVC_ALLOW_ANONYMOUS,
            secret_key=self.MAILSVC_SECRET_KEY,
            secure_cookies=self.MAILSVC_SECURE_COOKIES,
            allow_sender=self.MAILSVC_ALLOW_SENDER,
            allowed_domains=domains,
            max_request_bytes=self.MAILSVC_MAX_REQUEST_BYTES,
            max_attachment_bytes=self.MAILSVC_MAX_ATTACHMENT_BYTES,
            max_recipients=self.MAILSVC_MAX_RECIPIENTS,
            max_batch=self.MAILSVC_MAX_BATCH,
            rate_limit=self.MAILSVC_RATE_LIMIT,
            rate_burst=self.MAILSVC_RATE_BURST,
        )

    def service_config(self) -> ServiceConfig:
        return ServiceConfig(
            database_url=self.MAILSVC_DATABASE_URL,
            dev_mode=self.dev_mode,
            dev_smtp_port=self.MAILSVC_DEV_SMTP_PORT,
            dev_inbox_max=self.MAILSVC_DEV_INBOX_MAX,
            workers=self.MAILSVC_WORKERS,
            templates=self.MAILSVC_TEMPLATES,
            web=self.web_config(),
            max_pending=self.MAILSVC_MAX_PENDING,
            idempotency_ttl=self.MAILSVC_IDEMPOTENCY_TTL,
            lease_seconds=self.MAILSVC_LEASE_SECONDS,
            claim_batch=self.MAILSVC_CLAIM_BATCH,
            worker_concurrency=self.MAILSVC_WORKER_CONCURRENCY,
            poll_interval=self.MAILSVC_POLL_INTERVAL,
            retry_first=self.MAILSVC_RETRY_FIRST,
            retry_max=self.MAILSVC_RETRY_MAX,
            retry_lifetime=self.MAILSVC_RETRY_LIFETIME,
            retry_jitter=self.MAILSVC_RETRY_JITTER,
            relay_backoff=self.MAILSVC_RELAY_BACKOFF,
            relay_backoff_max=self.MAILSVC_RELAY_BACKOFF_MAX,
            retention_days=self.MAILSVC_RETENTION_DAYS,
        )


def load_settings(**overrides: object) -> Settings:
    """Build Settings or exit with one line naming the bad setting."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
        settings.mail_config()
    except ValidationError as exc:
        raise SystemExit(f"mailsvc: configuration error: {config_error_from(exc, {})}") from None
    except ValueError as exc:  # ConfigError
        raise SystemExit(f"mailsvc: configuration error: {exc}") from None
    return settings
