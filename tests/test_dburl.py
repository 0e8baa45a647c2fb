"""``MAILSVC_DATABASE_URL`` is parsed in one place; bad URLs fail with the setting named and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsvc.dburl import parse_database_url
from mailsvc.devinbox.store import inbox_path_for
from mailsvc.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "path"),
    [
        (None, Path("var/mailsvc.sqlite3")),
        ("", Path("var/mailsvc.sqlite3")),
        ("sqlite:///var/x.db", Path("var/x.db")),
        ("sqlite:////abs/x.db", Path("/abs/x.db")),
    ],
)
def test_sqlite_urls(url: str | None, path: Path) -> None:
    parsed = parse_database_url(url)
    assert (parsed.kind, parsed.path, parsed.dsn) == ("sqlite", path, None)


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:pw@db:5432/mail", "postgres://u:pw@db:5432/mail", "postgresql+asyncpg://u:pw@db:5432/mail"],
)
def test_postgres_urls(url: str) -> None:
    parsed = parse_database_url(url)
    assert (parsed.kind, parsed.path, parsed.dsn) == ("postgresql", None, "postgresql://u:pw@db:5432/mail")
    assert parsed.where == "db:5432/mail"  # no credentials in messages


@pytest.mark.parametrize(
    ("url", "fix"),
    [
        ("sqlite:x.db", "sqlite:///relative/path"),
        ("sqlite://x.db", "sqlite:///relative/path"),
        ("sqlite:///", "needs a file path"),
        ("mysql://root@db/x", "unknown database scheme 'mysql'"),
        ("postgresql:db", "unknown database scheme"),
    ],
)
def test_bad_urls_name_the_setting_and_the_fix(url: str, fix: str) -> None:
    with pytest.raises(ConfigError, match="MAILSVC_DATABASE_URL") as info:
        parse_database_url(url)
    assert fix in str(info.value)


def test_the_dev_inbox_sits_next_to_the_sqlite_outbox() -> None:
    assert inbox_path_for("sqlite:////tmp/x/o.sqlite3") == Path("/tmp/x/devinbox.sqlite3")
    assert inbox_path_for("sqlite:///o.sqlite3") == Path("devinbox.sqlite3")
    assert inbox_path_for("postgresql://db/mail") == Path("var/devinbox.sqlite3")
    assert inbox_path_for("sqlite:///:memory:") == Path("var/devinbox.sqlite3")
