"""Listing a tenant's messages: the filters, the page, and the opaque cursor (keyset on (created_at, id)).

Why a keyset and not an offset: a page starts strictly after the last row of the one before in
(created_at, id) order, newest first, so a message inserted while a client pages (it sorts before
the first page) neither shifts nor repeats a row: every message committed before the first page is
listed exactly once. Why a scan bound (:data:`SCAN_ROWS`): a filter that matches rarely (a tag, a
recipient) would otherwise walk a tenant's whole history in one request; a page reads at most that
many rows of the index range and, if it found fewer matches than asked, says where to go on (``next``),
so every request is bounded and a client simply follows ``next`` until it is None.

The cursor carries the backend's own sort key as text (SQLite's float timestamp, PostgreSQL's
microsecond timestamp), so it compares exactly; it is base64url of a small JSON array, checked on
the way in (:func:`decode_cursor` raises :class:`MessageError` naming ``cursor``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from datetime import datetime

from ..errors import MessageError
from .states import MessageState

__all__ = [
    "DEFAULT_PAGE",
    "MAX_PAGE",
    "SCAN_ROWS",
    "Cursor",
    "MessagePage",
    "MessageQuery",
    "MessageSummary",
    "decode_cursor",
    "encode_cursor",
]

DEFAULT_PAGE = 50
MAX_PAGE = 100
#: Rows of the index range one page may read (matching or not).
SCAN_ROWS = 5000
_KEY = re.compile(r"^[0-9T:.+-]{1,40}$")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the previous page ended: its last row's backend sort key (text) and id."""

    key: str
    id: str


@dataclass(frozen=True, slots=True)
class MessageQuery:
    """Filters of a listing; None means "any". ``since``/``until`` bound ``created_at`` (until excluded)."""

    state: MessageState | None = None
    tag: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    to: str | None = None
    batch_id: str | None = None


@dataclass(frozen=True, slots=True)
class MessageSummary:
    id: str
    message_id: str
    batch_id: str | None
    state: MessageState
    created_at: datetime
    send_at: datetime | None
    tags: tuple[str, ...]
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class MessagePage:
    items: list[MessageSummary] = field(default_factory=list)
    next: str | None = None  # pass as ``cursor`` for the next page; None: nothing older


def encode_cursor(cursor: Cursor) -> str:
    raw = json.dumps([cursor.key, cursor.id], separators=(",", ":")).encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """The cursor a page handed out; anything else is a :class:`MessageError` on ``cursor``."""
    bad = MessageError("cursor", "not a cursor this service handed out (pass a page's 'next' unchanged)")
    if len(text) > 200 or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise bad
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):
        raise bad from None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, str) for v in value)
        or not _KEY.fullmatch(value[0])
        or not _ID.fullmatch(value[1])
    ):
        raise bad
    return Cursor(value[0], value[1])
