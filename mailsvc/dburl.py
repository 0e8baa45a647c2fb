"""``MAILSVC_DATABASE_URL``, parsed in one place.

Why one parser: the outbox, ``mailsvc db``, the runtime's retention option and the dev inbox
(which keeps its file next to the outbox's) all need to know which database a URL names; each
reading it its own way is how ``postgres:`` came to be accepted by one and not another.

    sqlite:///relative/path.sqlite3     a file relative to the working directory
    sqlite:////absolute/path.sqlite3    an absolute path
    postgresql://user@host:5432/db      also postgres:// and SQLAlchemy-style postgresql+asyncpg://
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import ConfigError

__all__ = ["DEFAULT_DATABASE_URL", "DatabaseURL", "dev_outbox_url", "parse_database_url"]

SETTING = "MAILSVC_DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite:///var/mailsvc.sqlite3"
_POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})


@dataclass(frozen=True, slots=True)
class DatabaseURL:
    """What a database URL names.

    >>> parse_database_url("sqlite:////srv/mail/outbox.sqlite3").path
    PosixPath('/srv/mail/outbox.sqlite3')
    >>> parse_database_url("postgres://mail:secret@db:5432/mail").where
    'db:5432/mail'
    """

    url: str
    kind: Literal["sqlite", "postgresql"]
    path: Path | None = None  # the SQLite file
    dsn: str | None = None  # the PostgreSQL URL as asyncpg takes it (postgresql://...)

    @property
    def where(self) -> str:
        """The URL without scheme and credentials, for messages and logs."""
        if self.path is not None:
            return str(self.path)
        return self.url.partition("://")[2].rpartition("@")[2]


def parse_database_url(url: str | None) -> DatabaseURL:
    """Parse ``url`` (None or empty: the default SQLite file); raise :class:`ConfigError` naming the fix.

    >>> parse_database_url(None).path
    PosixPath('var/mailsvc.sqlite3')
    >>> parse_database_url("postgresql+asyncpg://db/mail").dsn
    'postgresql://db/mail'
    """
    url = url or DEFAULT_DATABASE_URL
    scheme, _, rest = url.partition(":")
    if scheme == "sqlite":
        if not rest.startswith("///"):
            raise ConfigError(SETTING, f"{url!r}: write sqlite:///relative/path or sqlite:////absolute/path")
        if not rest[3:]:
            raise ConfigError(SETTING, "sqlite:/// needs a file path, e.g. sqlite:///var/mailsvc.sqlite3")
        return DatabaseURL(url, "sqlite", path=Path(rest[3:]))
    if scheme.split("+")[0] in _POSTGRES_SCHEMES and rest.startswith("//"):
        return DatabaseURL(url, "postgresql", dsn=f"postgresql:{rest}")
    raise ConfigError(SETTING, f"unknown database scheme {scheme!r}: use sqlite:///path or postgresql://...")


def dev_outbox_url(url: str | None) -> str:
    """The outbox dev mode uses instead of ``url``: always an SQLite file of its own.

    Why its own: mail accepted in dev mode must never reach a real relay once
    ``MAIL_SERVER`` is set (it was addressed to test accounts, from a made-up
    sender). So dev mode never writes to the production outbox, SQLite or
    PostgreSQL: ``var/mailsvc.sqlite3`` becomes ``var/mailsvc.dev.sqlite3``.

    >>> dev_outbox_url("sqlite:///var/mailsvc.sqlite3")
    'sqlite:///var/mailsvc.dev.sqlite3'
    >>> dev_outbox_url("postgresql://db/mail")
    'sqlite:///var/mailsvc.dev.sqlite3'
    """
    parsed = parse_database_url(url)
    path = parsed.path if parsed.path is not None else Path(DEFAULT_DATABASE_URL.removeprefix("sqlite:///"))
    if path.stem.endswith(".dev"):
        return f"sqlite:///{path.as_posix()}"
    return f"sqlite:///{path.with_name(f'{path.stem}.dev{path.suffix}').as_posix()}"
