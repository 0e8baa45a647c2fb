"""Frozen delivery configuration, built once from Flask-Mail style ``MAIL_*`` keys.

Why a model of its own: transports and the extension take this object as data
instead of reading ``current_app`` or the environment, so they can be tested and
run (worker processes, the CLI) without any app. Contradictions fail here, at
load, with a message naming the setting and the fix.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .addresses import AddressLike, AddressRules, parse_address
from .dburl import DEFAULT_DATABASE_URL
from .dkimsign import Keyring, keyring
from .errors import ConfigError, MessageError
from .oauth2 import Mechanism, OAuth2Credentials
from .webhookconfig import WebhookEndpoint

__all__ = [
    "NOT_SETTINGS",
    "unknown_settings",
    "MAIL_KEYS",
    "MailConfig",
    "SERVICE_NAMES",
    "ServiceConfig",
    "WebConfig",
    "env_field",
    "is_loopback",
    "service_env_name",
    "HostPort",
    "LogFormat",
]

# Flask-Mail setting name -> MailConfig field.
_KEYS = {
    "MAIL_SERVER": "server",
    "MAIL_PORT": "port",
    "MAIL_USE_TLS": "use_tls",
    "MAIL_USE_SSL": "use_ssl",
    "MAIL_USERNAME": "username",
    "MAIL_PASSWORD": "password",
    "MAIL_DEFAULT_SENDER": "default_sender",
    "MAIL_MAX_EMAILS": "max_emails",
    "MAIL_SUPPRESS_SEND": "suppress_send",
    "MAIL_ASCII_ATTACHMENTS": "ascii_attachments",
    "MAIL_TIMEOUT": "timeout",
    "MAIL_VALIDATE_CERTS": "validate_certs",
    "MAIL_CA_FILE": "ca_file",
    "MAIL_POOL_SIZE": "pool_size",
    "MAIL_MESSAGE_ID_DOMAIN": "message_id_domain",
    "MAIL_LOCAL_HOSTNAME": "local_hostname",
    "MAIL_ALLOW_PLAINTEXT_AUTH": "allow_plaintext_auth",
    "MAIL_TRANSPORT": "transport",
    "MAIL_DEBUG": "debug",
    "MAIL_ADDRESS_RULES": "address_rules",
    "MAIL_DKIM_DOMAIN": "dkim_domain",
    "MAIL_DKIM_SELECTOR": "dkim_selector",
    "MAIL_DKIM_KEY_FILE": "dkim_key_file",
    "MAIL_DKIM_KEYS_FILE": "dkim_keys_file",
    "MAIL_OAUTH2_TOKEN_URL": "oauth2_token_url",
    "MAIL_OAUTH2_CLIENT_ID": "oauth2_client_id",
    "MAIL_OAUTH2_CLIENT_SECRET": "oauth2_client_secret",
    "MAIL_OAUTH2_REFRESH_TOKEN": "oauth2_refresh_token",
    "MAIL_OAUTH2_SCOPE": "oauth2_scope",
    "MAIL_OAUTH2_MECHANISM": "oauth2_mechanism",
    "MAIL_SES_REGION": "ses_region",
    "MAIL_SES_ENDPOINT_URL": "ses_endpoint_url",
    "MAIL_SES_MAX_SEND_RATE": "ses_max_send_rate",
    "MAIL_SES_CONFIGURATION_SET": "ses_configuration_set",
    "MAIL_SES_MAX_RECIPIENTS": "ses_max_recipients",
}
# MAIL_* keys the service's environment spells MAILSVC_* (issue 15's names); the library reads the MAIL_* form.
SERVICE_NAMES: Mapping[str, str] = {k: "MAILSVC_" + k.removeprefix("MAIL_") for k in _KEYS if "_DKIM_" in k}
_FIELD_TO_KEY = {v: k for k, v in _KEYS.items()}
MAIL_KEYS: Mapping[str, str] = _KEYS  # public: the settings module and its README check read it
_DKIM_FIELDS = ("dkim_domain", "dkim_selector", "dkim_key_file")  # one domain's key: all three or none
# OAuth2 is on when any of these is set, and then needs the three without a default (the secret is optional:
# a public client has none).
_OAUTH2_FIELDS = ("oauth2_token_url", "oauth2_client_id", "oauth2_client_secret", "oauth2_refresh_token")
_OAUTH2_REQUIRED = ("oauth2_token_url", "oauth2_client_id", "oauth2_refresh_token")
# MAIL_TRANSPORT: "package.module:attribute" (or "package.module.attribute").
_DOTTED_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*(?::[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)?")


def is_loopback(host: str) -> bool:
    """True for localhost and 127/8, ::1: the only hosts where plaintext AUTH is harmless."""
    if host.lower() in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MailConfig(BaseModel):
    """How to reach the SMTP relay. Build it with :meth:`from_mapping` from ``app.config``.

    >>> MailConfig(server="smtp.gmail.com", port=465, use_ssl=True,
    ...            username="me@gmail.com", password="app-password").port
    465
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    server: str = "localhost"
    port: int = Field(default=25, ge=1, le=65535)
    use_tls: bool = False
    use_ssl: bool = False
    username: str | None = None
    password: SecretStr | None = None
    default_sender: str | tuple[str, str] | None = None
    max_emails: int | None = Field(default=None, ge=1)
    suppress_send: bool = False
    ascii_attachments: bool = False
    timeout: float = Field(default=30.0, gt=0)
    validate_certs: bool = True
    ca_file: Path | None = None
    pool_size: int = Field(default=4, ge=1, le=256)
    message_id_domain: str | None = None
    local_hostname: str | None = None
    allow_plaintext_auth: bool = False
    # "package.module:factory", called with this config for each connection; unset = SMTP.
    transport: str | None = None
    debug: bool = False  # log each SMTP connection and transaction (never a password or a body) at INFO
    # "permissive": what Flask-Mail sends (root@localhost, *.test, IP literals, quoted local parts);
    # "deliverable": only addresses deliverable on the public internet. Injection is refused under both.
    address_rules: AddressRules = "permissive"
    # DKIM (mailsvc/dkimsign.py): one domain's key, and/or a JSON file of {domain: {selector, key_file}};
    # a message is signed with the key of its From domain. Keys are read and checked when this is built.
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_key_file: Path | None = None
    dkim_keys_file: Path | None = None
    # OAuth2 instead of MAIL_PASSWORD (mailsvc/oauth2.py): a refresh token that the token endpoint trades for
    # short-lived access tokens, presented with AUTH XOAUTH2 (or OAUTHBEARER); MAIL_USERNAME is the mailbox.
    oauth2_token_url: str | None = None  # https (http only to loopback, for tests)
    oauth2_client_id: str | None = None
    oauth2_client_secret: SecretStr | None = None  # unset for a public client
    oauth2_refresh_token: SecretStr | None = None
    oauth2_scope: str | None = None  # sent with the refresh; unset: the scopes the refresh token was granted
    oauth2_mechanism: Mechanism | None = None  # unset: XOAUTH2 when offered, else OAUTHBEARER
    # Amazon SES v2 (MAIL_TRANSPORT=ses, transports/ses.py); credentials come from the standard AWS chain.
    ses_region: str | None = None
    ses_endpoint_url: str | None = None  # unset = AWS's own; http only to loopback (a local SES look-alike)
    ses_max_send_rate: float | None = Field(default=None, gt=0)  # recipients/s; unset = the account's MaxSendRate
    ses_configuration_set: str | None = None
    ses_max_recipients: int = Field(default=50, ge=1, le=50)  # per SendEmail call (SES's own limit is 50)

    @field_validator(
        "server",
        "message_id_domain",
        "local_hostname",
        "username",
        "oauth2_token_url",
        "oauth2_client_id",
        "oauth2_scope",
    )
    @classmethod
    def _no_control_chars(cls, v: str | None) -> str | None:
        if v is not None and any(c in v for c in "\r\n\x00"):
            raise ValueError("must not contain CR, LF or NUL")
        return v

    @field_validator("ses_endpoint_url")
    @classmethod
    def _ses_endpoint(cls, v: str | None) -> str | None:
        """https, or http to this machine only: credentials are signed into every request."""
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme == "https" and parts.hostname:
            return v
        if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
            return v
        raise ValueError(
            "must be an https:// URL (http:// only to 127.0.0.1 or localhost), e.g. https://email.eu-west-1.amazonaws.com"
        )

    @field_validator("ses_region", "ses_configuration_set")
    @classmethod
    def _aws_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", v):
            raise ValueError("must be letters, digits, '-' or '_' (e.g. eu-west-1)")
        return v

    @field_validator("transport")
    @classmethod
    def _dotted_path(cls, v: str | None) -> str | None:
        """Only the spelling is checked here; the import happens where transports live (transports/factory.py)."""
        if not v:
            return None
        if not _DOTTED_PATH.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a dotted path: write 'package.module:Factory', "
                "e.g. 'mailsvc.transports.memory:MemoryTransport'"
            )
        return v

    @field_validator("default_sender")
    @classmethod
    def _sender_parses(cls, v: AddressLike | None) -> AddressLike | None:
        if v is None or v == "":
            return None
        try:
            parse_address(v, "MAIL_DEFAULT_SENDER")
        except MessageError as exc:
            raise ValueError(exc.reason) from exc
        return v

    @field_validator("ca_file")
    @classmethod
    def _ca_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"no such file: {v}")
        return v

    @field_validator("oauth2_token_url")
    @classmethod
    def _token_url(cls, v: str | None) -> str | None:
        """https, or http to a loopback address (a test's or a developer's own endpoint): the body carries secrets."""
        if v is None:
            return None
        try:
            parts = urlsplit(v)
            host = parts.hostname
        except ValueError:
            host = None
        if host is None or parts.scheme not in ("https", "http"):
            raise ValueError(f"{v!r} is not a URL: give the token endpoint, e.g. https://oauth2.googleapis.com/token")
        if parts.username is not None or parts.password is not None or parts.fragment:
            raise ValueError("must not carry a user, password or fragment: the client secret has its own setting")
        if parts.scheme == "http" and not is_loopback(host):
            raise ValueError(
                f"must be https: the refresh token and client secret would cross the network in clear to {host}"
            )
        return v

    @field_validator("oauth2_mechanism", mode="before")
    @classmethod
    def _mechanism_upper(cls, v: Any) -> Any:
        return v.strip().upper() or None if isinstance(v, str) else v

    @field_validator(
        "username",
        "password",
        *_DKIM_FIELDS,
        "dkim_keys_file",
        *_OAUTH2_FIELDS,
        "oauth2_scope",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        """Flask-Mail skips AUTH when the credentials are empty strings (a blank line in .env); so do we."""
        if v == "" or (isinstance(v, SecretStr) and v.get_secret_value() == ""):
            return None
        return v

    @model_validator(mode="after")
    def _coherent(self) -> MailConfig:
        if self.use_tls and self.use_ssl:
            raise ValueError(
                "MAIL_USE_TLS/MAIL_USE_SSL: they are mutually exclusive; set MAIL_USE_SSL for "
                "implicit TLS (port 465) or MAIL_USE_TLS for STARTTLS (port 587), not both"
            )
        # The classic swap: it would hang for MAIL_TIMEOUT (465 never greets in clear) or fail obscurely.
        if self.use_tls and self.port == 465:
            raise ValueError(
                "MAIL_USE_TLS: port 465 is implicit TLS (SMTPS), where STARTTLS never starts: "
                "set MAIL_USE_SSL=true and MAIL_USE_TLS=false (or use port 587 with MAIL_USE_TLS)"
            )
        if self.use_ssl and self.port in (25, 587):
            raise ValueError(
                f"MAIL_USE_SSL: port {self.port} starts in plain text and upgrades with STARTTLS: "
                "set MAIL_USE_TLS=true and MAIL_USE_SSL=false (or use port 465 with MAIL_USE_SSL)"
            )
        if (
            self.password is not None
            and not (self.use_tls or self.use_ssl)
            and not is_loopback(self.server)
            and not self.allow_plaintext_auth
        ):
            raise ValueError(
                f"MAIL_PASSWORD: would be sent unencrypted to {self.server}: set MAIL_USE_SSL "
                "or MAIL_USE_TLS (or MAIL_ALLOW_PLAINTEXT_AUTH=true if you really mean it)"
            )
        return self

    @model_validator(mode="after")
    def _oauth2_coherent(self) -> MailConfig:
        """OAuth2 replaces the password, needs the mailbox, and is only ever sent over TLS."""
        given = [f for f in _OAUTH2_FIELDS if getattr(self, f) is not None]
        if not given:
            if self.oauth2_scope is not None or self.oauth2_mechanism is not None:
                which = "MAIL_OAUTH2_SCOPE" if self.oauth2_scope is not None else "MAIL_OAUTH2_MECHANISM"
                raise ValueError(
                    f"{which}: only means something with MAIL_OAUTH2_TOKEN_URL and the other OAuth2 settings"
                )
            return self
        missing = [f for f in _OAUTH2_REQUIRED if getattr(self, f) is None]
        if missing:
            raise ValueError(
                f"{_FIELD_TO_KEY[missing[0]]}: OAuth2 needs MAIL_OAUTH2_TOKEN_URL, MAIL_OAUTH2_CLIENT_ID and "
                "MAIL_OAUTH2_REFRESH_TOKEN (and MAIL_OAUTH2_CLIENT_SECRET unless the client is public)"
            )
        if self.password is not None:
            raise ValueError(
                "MAIL_PASSWORD: set either MAIL_PASSWORD or the MAIL_OAUTH2_* settings, not both "
                "(with OAuth2, AUTH uses an access token in place of the password)"
            )
        if self.username is None:
            raise ValueError("MAIL_USERNAME: OAuth2 logs in as a mailbox: set it to the account's address")
        if not self.encrypted:
            raise ValueError(
                "MAIL_OAUTH2_TOKEN_URL: an access token is only sent over TLS: set MAIL_USE_TLS "
                "(STARTTLS, port 587) or MAIL_USE_SSL (port 465)"
            )
        return self

    def oauth2(self) -> OAuth2Credentials | None:
        """The OAuth2 credentials, or None when AUTH uses MAIL_PASSWORD (or nothing)."""
        if self.oauth2_token_url is None or self.oauth2_client_id is None or self.oauth2_refresh_token is None:
            return None
        secret = self.oauth2_client_secret
        return OAuth2Credentials(
            self.oauth2_token_url,
            self.oauth2_client_id,
            secret.get_secret_value() if secret is not None else None,
            self.oauth2_refresh_token.get_secret_value(),
            self.oauth2_scope,
        )

    @model_validator(mode="after")
    def _dkim_keys_load(self) -> MailConfig:
        """A key that cannot be read or parsed stops start-up here, naming the setting, not at the first send."""
        single = (self.dkim_domain, self.dkim_selector, self.dkim_key_file)
        if any(v for v in single) and not all(v for v in single):
            missing = [_FIELD_TO_KEY[f] for f, v in zip(_DKIM_FIELDS, single, strict=True) if not v]
            raise ValueError(
                f"{missing[0]}: MAIL_DKIM_DOMAIN, MAIL_DKIM_SELECTOR and MAIL_DKIM_KEY_FILE go together "
                "(for several domains use MAIL_DKIM_KEYS_FILE)"
            )
        self.dkim_keyring()
        return self

    def dkim_keyring(self) -> Keyring:
        """The DKIM keys by From domain (read once per process; empty when none is configured)."""
        return keyring(
            self.dkim_domain,
            self.dkim_selector,
            self.dkim_key_file,
            self.dkim_keys_file,
            ("MAIL_DKIM_KEY_FILE", "MAIL_DKIM_KEYS_FILE"),
        )

    @property
    def encrypted(self) -> bool:
        return self.use_tls or self.use_ssl

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> MailConfig:
        """Read ``MAIL_*`` keys (``app.config``, a settings object's dict); unknown keys are ignored."""
        data = {field: mapping[key] for key, field in _KEYS.items() if key in mapping and mapping[key] is not None}
        try:
            return cls(**data)
        except ValidationError as exc:
            raise config_error_from(exc, _FIELD_TO_KEY) from None

    def to_mapping(self) -> dict[str, Any]:
        """The ``MAIL_*`` form, with the password still wrapped in SecretStr."""
        return {_FIELD_TO_KEY[name]: getattr(self, name) for name in type(self).model_fields}


class WebConfig(BaseModel):
    """Who may send through the web layer, and how much (issue 4). Passed in as data.

    Empty ``api_keys`` means the JSON API and the form are open: allowed in dev
    mode, refused with a real relay unless ``allow_anonymous`` says so on purpose.

    >>> WebConfig(api_keys=(SecretStr("k1"),), allowed_domains=("example.com",)).max_recipients
    50
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_keys: tuple[SecretStr, ...] = ()
    api_keys_file: Path | None = None  # JSON: tenants, their keys and scopes (web/tenants.py, README "Tenants")
    allow_anonymous: bool = False
    secret_key: SecretStr | None = None  # signs session cookies (and unsubscribe links); random per process when unset
    # The service's public base URL (https://mail.example.com): one-click unsubscribe links point under it.
    # None: bulk mail carries no List-Unsubscribe of ours, and a request asking for one is refused (422).
    public_url: str | None = None
    secure_cookies: bool | None = None  # None: Secure flag unless dev mode (plain http on 127.0.0.1)
    allow_sender: bool = False  # may a request set its own From?
    allowed_domains: tuple[str, ...] = ()  # recipient domains (and their subdomains); empty = any
    max_request_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    max_attachment_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_recipients: int = Field(default=50, ge=1)  # to + cc + bcc of one message
    max_batch: int = Field(default=10_000, ge=1)  # recipients of one bulk request
    max_render_chars: int = Field(default=512 * 1024, ge=64)  # output cap of request-supplied templates
    max_template_chars: int = Field(default=100_000, ge=64)  # source cap of request-supplied templates
    render_seconds: float = Field(default=5.0, gt=0, le=300)  # wall clock for all of a request's templates
    rate_limit: float = Field(default=50.0, ge=0)  # requests per second per key; 0 = no limit
    rate_burst: int = Field(default=100, ge=1)
    # Failed API keys and sign-ins per client address per minute, as a burst refilled over the minute; then 429.
    auth_failure_limit: int = Field(default=10, ge=1)
    # How far ahead a request's send_at may be (seconds; 30 days); later is a 422 naming send_at.
    schedule_horizon: float = Field(default=30 * 86400.0, gt=0, le=10 * 366 * 86400.0)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        """An https base (http only on a loopback host, for development), with no query or fragment."""
        if v is None or not v.strip():
            return None
        v = v.strip().rstrip("/")
        m = re.fullmatch(r"(https?)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(:[0-9]{1,5})?(/[A-Za-z0-9._~/%-]*)?", v)
        if m is None:
            raise ValueError("MAILSVC_PUBLIC_URL: give the service's base URL, e.g. https://mail.example.com")
        if m.group(1) == "http" and m.group(2) not in ("localhost", "127.0.0.1", "[::1]"):
            raise ValueError("MAILSVC_PUBLIC_URL: must be https (mailbox providers do not POST one-click to http)")
        return v

    @model_validator(mode="after")
    def _links_outlive_the_process(self) -> WebConfig:
        """Unsubscribe links are signed with the secret key: a random one would break every link at restart."""
        if self.public_url is not None and self.secret_key is None:
            raise ValueError(
                "MAILSVC_SECRET_KEY: MAILSVC_PUBLIC_URL is set, so unsubscribe links are signed; set a secret "
                "key (python -c 'import secrets; print(secrets.token_urlsafe(32))') so they outlive a restart"
            )
        return self


_HOST_PORT = re.compile(
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5]?[0-9]{1,4})"
)


def _host_port(value: str) -> str:
    m = _HOST_PORT.fullmatch(value)
    if m is None or int(m.group(2)) > 65535:
        raise ValueError(f"{value[:80]!r} is not host:port (e.g. 127.0.0.1:9100, [::1]:9100)")
    return value


HostPort = Annotated[str, AfterValidator(_host_port)]
LogFormat = Literal["text", "json"]


class ServiceConfig(BaseModel):
    """Settings of the service around delivery (outbox, workers, dev inbox), passed in as data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: str = DEFAULT_DATABASE_URL
    dev_mode: bool = True
    dev_smtp_port: int = Field(default=8025, ge=0, le=65535)
    dev_inbox_max: int = Field(default=1000, ge=1)  # captured messages kept; the oldest go first
    workers: int = Field(default=1, ge=0, le=64)
    # The workers in a `mailsvc worker` child of the service (mailsvc/workerprocess.py); None: the service's
    # entry points decide (a child on a machine with a second core and a real relay), an embedding app: no.
    worker_process: bool | None = None
    # The project's template folder (pages, and email/ templates), searched before the packaged ones; None: those only.
    templates: Path | None = None
    # Outbox and delivery workers (issue 3). Times are seconds; tests use fractions.
    max_pending: int = Field(default=100_000, ge=1)
    idempotency_ttl: float = Field(default=24 * 3600.0, gt=0)
    lease_seconds: float = Field(default=300.0, gt=0)
    claim_batch: int = Field(default=100, ge=1, le=10_000)
    worker_concurrency: int = Field(default=100, ge=1, le=10_000)
    poll_interval: float = Field(default=1.0, gt=0)
    retry_first: float = Field(default=300.0, gt=0)
    retry_max: float = Field(default=4000.0, gt=0)
    retry_lifetime: float = Field(default=5 * 24 * 3600.0, gt=0)
    retry_jitter: float = Field(default=0.1, ge=0, lt=1)
    relay_backoff: float = Field(default=30.0, gt=0)
    relay_backoff_max: float = Field(default=300.0, gt=0)
    # Several relays and their routes (issue 17; mailsvc/relayconfig.py); None: one relay from MAIL_*.
    relays_file: Path | None = None
    retention_days: float = Field(default=0.0, ge=0)  # delete final messages after N days (PostgreSQL); 0 = keep
    # The HTTP server (``mailsvc serve``, or hypercorn with ``--config python:hypercorn_config``): slow and
    # abusive clients (issue 13). Headers must arrive within keep_alive_timeout, a body within body_timeout.
    keep_alive_timeout: float = Field(default=5.0, gt=0, le=3600)  # idle keep-alive; also the wait for headers
    body_timeout: float = Field(default=60.0, gt=0, le=3600)  # a request's whole body, once its headers are in
    # hypercorn closes a connection silent this long even while its request is being answered: a backstop only.
    read_timeout: float = Field(default=120.0, gt=0, le=3600)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)  # request line + headers (431)
    max_connections: int = Field(default=1000, ge=0)  # open client connections per process; 0 = no cap
    # Bounces (mailsvc.bounces, README "Bounces"): with a domain, mail goes out with the VERP return path
    # bounces+<token>@<domain>, one SMTP transaction per recipient; the listener takes the reports sent there.
    bounce_domain: str | None = None
    bounce_listen: str | None = None  # host:port of the in-process listener in `mailsvc serve`; None: none
    bounce_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)  # a report's DATA (552 beyond)
    # Observability (issue 16): /metrics on an address of its own, unauthenticated (None: on the app, admin key);
    # one JSON object per log line instead of text.
    metrics_bind: HostPort | None = None
    # The service's worker process (worker_process): its own /metrics (outcomes, SMTP timings, in flight) there.
    worker_metrics_bind: HostPort | None = None
    log_format: LogFormat = "text"
    # Webhooks (mailsvc/webhooks.py): endpoints the operator names, each POSTed the events it asks for, signed;
    # a delivery not answered 2xx is retried with backoff and given up (status failed) after webhook_give_up s.
    webhooks: tuple[WebhookEndpoint, ...] = ()
    webhook_give_up: float = Field(default=3 * 86400.0, gt=0)
    webhook_timeout: float = Field(default=10.0, gt=0, le=300)  # per POST, connect to last byte
    webhook_concurrency: int = Field(default=16, ge=1, le=256)  # POSTs in flight per process
    webhook_retry_first: float = Field(default=5.0, gt=0)  # first retry after this, doubling to an hour
    web: WebConfig = Field(default_factory=WebConfig)

    @field_validator("webhooks")
    @classmethod
    def _unique_webhook_names(cls, v: tuple[WebhookEndpoint, ...]) -> tuple[WebhookEndpoint, ...]:
        names = [w.name for w in v]
        if len(set(names)) != len(names):
            raise ValueError(f"webhook names must be unique, got {names}")
        return v

    @field_validator("bounce_domain")
    @classmethod
    def _bounce_domain(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip().lower().rstrip(".")
        label = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
        if len(v) > 200 or not re.fullmatch(rf"{label}(\.{label})+", v):
            raise ValueError(
                "MAILSVC_BOUNCE_DOMAIN: give a domain name whose MX is the bounce listener, e.g. bounce.example.com"
            )
        return v

    @field_validator("bounce_listen")
    @classmethod
    def _bounce_listen(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        split_bind(v.strip(), "MAILSVC_BOUNCE_LISTEN")
        return v.strip()

    @model_validator(mode="after")
    def _bounces_are_signed(self) -> ServiceConfig:
        """VERP tokens are signed with the secret key: a random one would refuse every bounce after a restart."""
        if self.bounce_domain is not None and self.web.secret_key is None:
            raise ValueError(
                "MAILSVC_SECRET_KEY: MAILSVC_BOUNCE_DOMAIN is set, so return paths are signed; set a secret "
                "key (python -c 'import secrets; print(secrets.token_urlsafe(32))') so bounces outlive a restart"
            )
        if self.bounce_listen is not None and self.bounce_domain is None:
            raise ValueError("MAILSVC_BOUNCE_LISTEN: set MAILSVC_BOUNCE_DOMAIN too (the domain whose mail it takes)")
        return self

    @model_validator(mode="after")
    def _answers_fit_the_read_timeout(self) -> ServiceConfig:
        """hypercorn's read timeout also runs while a request is answered: shorter than the render budget, it
        would cut off (with no answer at all) a request that is still within its limits."""
        if self.read_timeout <= self.web.render_seconds:
            raise ValueError(
                f"MAILSVC_READ_TIMEOUT: {self.read_timeout:g} s would cut off requests still rendering within "
                f"MAILSVC_RENDER_SECONDS ({self.web.render_seconds:g} s): make it longer than that"
            )
        return self


def split_bind(value: str, setting: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:25`` for IPv6) as a pair; ValueError naming ``setting`` otherwise.

    >>> split_bind("127.0.0.1:2525", "X"), split_bind("[::1]:25", "X")
    (('127.0.0.1', 2525), ('::1', 25))
    """
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{setting}: give host:port, e.g. 127.0.0.1:2525 or 0.0.0.0:25")
    return host, int(port)


def config_error_from(exc: ValidationError, names: Mapping[str, str]) -> ConfigError:
    """Turn pydantic's multi-line report into one line naming the setting."""
    err = exc.errors()[0]
    loc = err.get("loc") or ()
    field = str(loc[0]) if loc else ""
    setting = names.get(field, field.upper() or "MAIL_*")
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if not field and msg.startswith(("MAIL_", "MAILSVC_")):
        setting, _, msg = msg.partition(": ")
        return ConfigError(setting, msg)
    return ConfigError(setting, msg)


# Names that look like settings but are read elsewhere, on purpose.
NOT_SETTINGS = frozenset({"MAILSVC_SETTINGS_MODULE", "MAILSVC_TEST_POSTGRES_URL", "MAIL_TEMPLATE_FOLDER"})


def unknown_settings(names: Iterable[str], known: Collection[str]) -> list[str]:
    """One line per ``MAIL_*``/``MAILSVC_*`` name that is not a setting, with the nearest known one.

    A typo'd key is otherwise ignored without a word, and the default silently applies.

    >>> unknown_settings(["MAIL_USE_TSL", "MAIL_PORT", "HOME"], ["MAIL_USE_TLS", "MAIL_PORT"])
    ['MAIL_USE_TSL is not a mailsvc setting and is ignored (did you mean MAIL_USE_TLS?)']
    """
    lines = []
    for name in sorted(set(names)):
        if not name.startswith(("MAIL_", "MAILSVC_")) or name in known or name in NOT_SETTINGS:
            continue
        near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]}?)" if near else ""
        lines.append(f"{name} is not a mailsvc setting and is ignored{hint}")
    return lines


def service_env_name(field: str) -> str:
    """The environment name of a :class:`ServiceConfig` or :class:`WebConfig` field.

    >>> service_env_name("max_batch")
    'MAILSVC_MAX_BATCH'
    """
    return f"MAILSVC_{field.upper()}"


def env_field(model: type[BaseModel], field: str, **override: Any) -> Any:
    """A settings field whose default and bounds are the config model's, so each is written once.

    ``override`` replaces what the environment form must differ in (a default that is
    only right for the service, say) and the settings module says why beside it.
    Typed ``Any`` because it stands where a field's default goes, as pydantic's ``Field`` does.
    """
    info = copy.copy(model.model_fields[field])
    for name, value in override.items():
        setattr(info, name, value)
    return info
