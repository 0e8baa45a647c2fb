"""The rules for what a request attaches to its messages: ``tags``, ``metadata`` and ``send_at``.

Why one module (Quart-free, below the web layer): the JSON API's models, their OpenAPI
patterns and ``mailsvc send/bulk --tag/--meta/--at`` check the same rules, written once.

* ``tags``: at most :data:`MAX_TAGS`, each 1-64 of letters, digits and ``. _ : -`` (ASCII, so a
  tag is the same string in every database and URL); repeats are dropped, order kept.
* ``metadata``: a flat object of at most :data:`MAX_META_KEYS` entries; keys as tags but at most
  40 characters, values strings of at most :data:`MAX_META_VALUE` characters without control
  characters. Every bound is per entry, so the OpenAPI document states each one exactly; the
  largest object is ~9 KB (20 x (40 + 4 x 100) bytes), stored with each message of a request.
* ``send_at``: RFC 3339 with an offset (``Z`` or ``+hh:mm``), at most ``horizon`` seconds ahead;
  a time already past means now. A naive time is refused: a server cannot guess its zone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import MessageError

__all__ = [
    "MAX_META_KEYS",
    "MAX_META_VALUE",
    "MAX_TAGS",
    "META_KEY_PATTERN",
    "META_VALUE_PATTERN",
    "SEND_AT_PATTERN",
    "TAG_PATTERN",
    "check_metadata",
    "check_send_at",
    "check_tags",
    "parse_send_at",
]

MAX_TAGS = 10
MAX_META_KEYS = 20
MAX_META_VALUE = 100
TAG_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
META_KEY_PATTERN = r"^[A-Za-z0-9._:-]{1,40}$"
META_VALUE_PATTERN = r"^[^\x00-\x1f\x7f]*$"
# RFC 3339's date-time (section 5.6) with the offset required, from year 0001, without leap seconds
# (a validator accepts :60 only at the end of a UTC day, which no pattern can state).
SEND_AT_PATTERN = (
    r"^((?!0000)[0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])"
    r"(\.[0-9]{1,9})?([Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
)
_TAG = re.compile(TAG_PATTERN)
_META_KEY = re.compile(META_KEY_PATTERN)
_META_VALUE = re.compile(META_VALUE_PATTERN)
_SEND_AT = re.compile(SEND_AT_PATTERN)


def check_tags(tags: Iterable[object], field: str = "tags") -> tuple[str, ...]:
    """The tags, repeats dropped; :class:`MessageError` naming ``field`` (and the index) otherwise."""
    out: dict[str, None] = {}
    for i, tag in enumerate(tags):
        if not isinstance(tag, str) or not _TAG.fullmatch(tag):
            raise MessageError(f"{field}[{i}]", "1-64 letters, digits, '.', '_', ':' or '-'")
        out[tag] = None
        if i >= MAX_TAGS:
            raise MessageError(field, f"at most {MAX_TAGS} tags")
    return tuple(out)


def check_metadata(metadata: Mapping[Any, object], field: str = "metadata") -> dict[str, str]:
    if len(metadata) > MAX_META_KEYS:
        raise MessageError(field, f"at most {MAX_META_KEYS} keys")
    for key, value in metadata.items():
        if not isinstance(key, str) or not _META_KEY.fullmatch(key):
            raise MessageError(field, f"keys are 1-40 letters, digits, '.', '_', ':' or '-' (got {str(key)[:40]!r})")
        if not isinstance(value, str) or len(value) > MAX_META_VALUE or not _META_VALUE.fullmatch(value):
            raise MessageError(
                f"{field}.{key}", f"a string of at most {MAX_META_VALUE} characters, no control characters"
            )
    return {str(k): str(v) for k, v in metadata.items()}


def parse_send_at(value: str, field: str = "send_at") -> datetime:
    """An RFC 3339 date-time with an offset, in UTC."""
    m = _SEND_AT.fullmatch(value)
    if m is None:
        raise MessageError(
            field, "an RFC 3339 time with an offset, e.g. 2026-05-01T09:30:00Z or 2026-05-01T11:30:00+02:00"
        )
    year, month, day, hour, minute, second, fraction, offset = m.groups()
    micro = int((fraction or ".0")[1:7].ljust(6, "0"))
    tz = "+00:00" if offset in ("Z", "z") else offset
    try:
        local = datetime.fromisoformat(f"{year}-{month}-{day}T{hour}:{minute}:{second}{tz}")
    except ValueError:
        raise MessageError(field, f"{value[:40]!r} is not a date that exists") from None
    try:
        return (local + timedelta(microseconds=micro)).astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-23:59 is after datetime.max in UTC, 0001-01-01T00:00+01:00 before min
        return datetime.max.replace(tzinfo=UTC) if int(year) > 1 else datetime.min.replace(tzinfo=UTC)


def check_send_at(value: str, horizon: float, field: str = "send_at", now: datetime | None = None) -> datetime | None:
    """When to send: None for now (a time already past), else the UTC time; refused past ``horizon`` seconds."""
    at = parse_send_at(value, field)
    now = now or datetime.now(UTC)
    if at <= now:
        return None
    if at > now + timedelta(seconds=horizon):
        days = horizon / 86400
        raise MessageError(field, f"at most {days:g} days ahead (MAILSVC_SCHEDULE_HORIZON is {horizon:.0f} s)")
    return at
