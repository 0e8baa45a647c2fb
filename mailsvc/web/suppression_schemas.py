"""The suppression list's request and answer models (``/api/suppressions``), and its cursor.

Why a module beside :mod:`.schemas`: these share its address and stream rules but none of its
message models. Addresses are checked as a message's are and answered in the form the outbox
keys them by (envelope form, IDNA domain, lower-cased: :func:`mailsvc.outbox.suppressions.address_key`),
so what a client lists is what it can delete.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..outbox.suppressions import ALL_STREAMS, Reason, parse_key
from .schemas import MAILBOX_FORMAT, STREAM_PATTERN, Stream

__all__ = [
    "CURSOR_PATTERN",
    "LIST_PATTERN",
    "MAX_PAGE",
    "SuppressionAddress",
    "SuppressionOut",
    "SuppressionPage",
    "SuppressionQuery",
    "SuppressionsAdded",
    "SuppressionsIn",
    "UnsuppressQuery",
    "cursor_after",
    "cursor_of",
    "key_of",
]

MAX_PAGE = 500
MAX_ADDRESSES = 1000
#: A stream name, or ``*``: the entries that hold for every stream.
LIST_PATTERN = rf"^(\{ALL_STREAMS}|{STREAM_PATTERN[1:-1]})$"
#: ``<stream>:<address>`` of the last entry a page gave; any such string is a position in the order.
CURSOR_PATTERN = rf"^(\{ALL_STREAMS}|{STREAM_PATTERN[1:-1]}):[^\x00-\x1f\x7f]{{0,998}}$"
_CURSOR = re.compile(CURSOR_PATTERN)


def key_of(value: str) -> str:
    """``value`` as the list keys it (raises ValueError saying why it is not an address)."""
    return parse_key(value)


SuppressionAddress = Annotated[
    str,
    Field(
        min_length=1,
        max_length=998,
        json_schema_extra={"format": MAILBOX_FORMAT, "description": "an address (a display name is ignored)"},
    ),
    AfterValidator(key_of),
]
ListStream = Annotated[
    str, Field(pattern=LIST_PATTERN, description="a stream's entries, or '*': those that hold for every stream")
]


class SuppressionsIn(BaseModel):
    """``POST /api/suppressions``: put addresses on the caller's tenant's list.

    Where an entry holds: ``unsubscribe`` on ``stream`` (``"default"`` unless named); ``hard_bounce``,
    ``complaint`` and ``manual`` on ``stream`` when named, else on every stream (``"*"``).
    """

    model_config = ConfigDict(extra="forbid")

    addresses: Annotated[list[SuppressionAddress], Field(min_length=1, max_length=MAX_ADDRESSES)]
    reason: Reason = Reason.MANUAL
    stream: Stream | None = None


class SuppressionsAdded(BaseModel):
    added: int = Field(description="how many were not on the list yet (an entry there keeps its first reason)")
    addresses: list[str] = Field(description="the addresses as the list keys them")
    stream: str = Field(description="where they hold: a stream, or '*' for every stream")
    reason: Reason


class SuppressionQuery(BaseModel):
    """``GET /api/suppressions``'s query: exact filters, a page size, the ``next`` of the previous page."""

    model_config = ConfigDict(extra="forbid")

    reason: Reason | None = None
    stream: ListStream | None = None
    address: SuppressionAddress | None = None
    limit: int = Field(default=100, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(default=None, pattern=CURSOR_PATTERN, description="the previous page's next")


class UnsuppressQuery(BaseModel):
    """``DELETE /api/suppressions/<address>``'s query: the one stream to remove it from (else every entry)."""

    model_config = ConfigDict(extra="forbid")

    stream: ListStream | None = None


class SuppressionOut(BaseModel):
    address: str
    stream: str = Field(description="a stream, or '*': every stream")
    reason: str
    source: str = Field(description="what put it there: api:<key id>, one-click, smtp:<relay reply>, cli, ...")
    created_at: str


class SuppressionPage(BaseModel):
    suppressions: list[SuppressionOut]
    next: str | None = Field(description="pass as cursor for the next page; null on the last one")


def cursor_of(stream: str, address: str) -> str:
    return f"{stream}:{address}"


def cursor_after(cursor: str | None) -> tuple[str, str] | None:
    """The (stream, address) a cursor names (its pattern checked by :class:`SuppressionQuery` already)."""
    if cursor is None:
        return None
    if not _CURSOR.fullmatch(cursor):
        raise ValueError("not a cursor this service gave")
    stream, _, address = cursor.partition(":")
    return stream, address
