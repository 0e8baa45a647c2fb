"""Captured mail, kept in a SQLite file beside the outbox so it survives restarts.

Why a file of its own rather than a table in the outbox: the dev inbox is a
development convenience with its own lifecycle (cleared at will, capped), and
keeping it apart means its writes never contend with the outbox's durable,
``synchronous=FULL`` transactions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from ..dburl import parse_database_url
from ..errors import ConfigError, OutboxError
from .mailview import summarize

__all__ = ["InboxStore", "StoredMessage", "Summary", "inbox_path_for"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at TEXT    NOT NULL,
    sender      TEXT    NOT NULL,
    recipients  TEXT    NOT NULL,  -- JSON list of envelope recipients
    subject     TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    attachments INTEGER NOT NULL,
    search      TEXT    NOT NULL,  -- lower-cased recipients, header addresses and subject
    raw         BLOB    NOT NULL
);
"""
_COLUMNS = "id, received_at, sender, recipients, subject, message_id, size, attachments"


def inbox_path_for(database_url: str) -> Path:
    """``sqlite:///var/mailsvc.sqlite3`` -> ``var/devinbox.sqlite3``; other databases -> ``var/``.

    >>> inbox_path_for("sqlite:////tmp/x/o.sqlite3").as_posix()
    '/tmp/x/devinbox.sqlite3'
    """
    try:
        path = parse_database_url(database_url).path
    except ConfigError:  # the outbox reports a bad URL; the inbox need not
        path = None
    if path is not None and path != Path(":memory:"):
        return path.parent / "devinbox.sqlite3"
    return Path("var") / "devinbox.sqlite3"


@dataclass(frozen=True, slots=True)
class Summary:
    """One row of the inbox list."""

    id: int
    received_at: datetime
    sender: str
    recipients: list[str]
    subject: str
    message_id: str
    size: int
    attachments: int


@dataclass(frozen=True, slots=True)
class StoredMessage:
    summary: Summary
    raw: bytes


def _summary(row: tuple[object, ...]) -> Summary:
    return Summary(
        id=int(row[0]),  # type: ignore[call-overload]
        received_at=datetime.fromisoformat(str(row[1])),
        sender=str(row[2]),
        recipients=list(json.loads(str(row[3]))),
        subject=str(row[4]),
        message_id=str(row[5]),
        size=int(row[6]),  # type: ignore[call-overload]
        attachments=int(row[7]),  # type: ignore[call-overload]
    )


def _like(query: str) -> str:
    escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class InboxStore:
    """Messages received by the dev SMTP server, newest first, at most ``cap`` of them.

    >>> store = InboxStore(Path("var/devinbox.sqlite3"), cap=1000)   # doctest: +SKIP
    >>> await store.open(); await store.add("a@x", ["b@y"], raw)       # doctest: +SKIP
    """

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = cap
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = await aiosqlite.connect(self.path)
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.executescript(_SCHEMA)
            await self._db.commit()
        except (OSError, aiosqlite.Error) as exc:
            await self.close()
            raise OutboxError(f"dev inbox: cannot open {self.path}: {exc}") from exc

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise OutboxError("dev inbox store is not open (is the app serving?)")
        return self._db

    async def add(self, sender: str, recipients: list[str], raw: bytes) -> int:
        """Store one received message and drop the oldest beyond the cap; returns its id."""
        info = summarize(raw)
        search = "\n".join([*recipients, *info.addresses, info.subject]).lower()
        now = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            cur = await self.db.execute(
                "INSERT INTO messages"
                " (received_at, sender, recipients, subject, message_id, size, attachments, search, raw)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    now,
                    sender,
                    json.dumps(recipients),
                    info.subject,
                    info.message_id,
                    len(raw),
                    info.attachments,
                    search,
                    raw,
                ),
            )
            new_id = cur.lastrowid
            await self.db.execute(
                "DELETE FROM messages WHERE id <= (SELECT id FROM messages ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (self.cap,),
            )
            await self.db.commit()
        except aiosqlite.Error as exc:
            raise OutboxError(f"dev inbox: cannot store a message in {self.path}: {exc}") from exc
        assert new_id is not None  # INSERT into a rowid table always sets it
        return new_id

    async def search(self, query: str = "", *, offset: int = 0, limit: int = 50) -> tuple[int, list[Summary]]:
        """(total matching, one page of them) newest first; ``query`` matches recipients or subject."""
        where, params = ("WHERE search LIKE ? ESCAPE '\\'", [_like(query)]) if query.strip() else ("", [])
        async with self.db.execute(f"SELECT COUNT(*) FROM messages {where}", params) as cur:
            row = await cur.fetchone()
        total = int(row[0]) if row else 0
        async with self.db.execute(
            f"SELECT {_COLUMNS} FROM messages {where} ORDER BY id DESC LIMIT ? OFFSET ?", [*params, limit, offset]
        ) as cur:
            rows = await cur.fetchall()
        return total, [_summary(tuple(r)) for r in rows]

    async def get(self, id: int) -> StoredMessage | None:
        async with self.db.execute(f"SELECT {_COLUMNS}, raw FROM messages WHERE id = ?", (id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return StoredMessage(_summary(tuple(row)), bytes(row[8]))

    async def delete(self, id: int) -> bool:
        cur = await self.db.execute("DELETE FROM messages WHERE id = ?", (id,))
        await self.db.commit()
        return cur.rowcount > 0

    async def delete_all(self) -> int:
        cur = await self.db.execute("DELETE FROM messages")
        await self.db.commit()
        return cur.rowcount
