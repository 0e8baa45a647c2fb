"""Logging for ``mailsvc serve``, ``mailsvc worker`` and ``hypercorn asgi:app``: one setup for all three.

Why third-party loggers are pinned at WARNING: at DEBUG, aiosqlite and asyncpg log
every statement with its parameters (message bodies, recipients), and aiosmtpd
(the dev inbox) logs each SMTP line it reads, AUTH included. Turning *our* level
up to DEBUG to chase a bug must not write mail or credentials into the log, so
those loggers stay at WARNING whatever level is asked for.

    >>> configure_logging("DEBUG")
    >>> logging.getLogger("aiosqlite").getEffectiveLevel() == logging.WARNING
    True
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["FORMAT", "QUIET_LOGGERS", "JsonFormatter", "TextFormatter", "configure_logging"]

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Loggers whose DEBUG/INFO output can carry SQL parameters, SMTP lines, HTTP/2 headers or (botocore) SES
# request bodies: the raw message, base64.
QUIET_LOGGERS = ("aiosqlite", "asyncpg", "aiosmtplib", "mail.log", "hpack", "h2", "botocore", "aiobotocore")


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``MAILSVC_LOG_FORMAT=json``): what the text line says, as fields.

    ``time``, ``level``, ``logger`` and ``message`` (the text line's message, word for word), plus
    the ``fields`` a call passes in ``extra`` (the accepted message's id and recipient count, each
    delivery's outcome and code), and ``exc`` for a traceback. Only what the text line carries:
    never a body or a secret. A line is always one line (newlines inside are escaped by JSON).

    >>> rec = logging.LogRecord("mailsvc.web", logging.INFO, "", 0, "accepted id=%s", ("a1",), None)
    >>> rec.fields = {"id": "a1", "recipients": 2}
    >>> json.loads(JsonFormatter().format(rec))["fields"]
    {'id': 'a1', 'recipients': 2}
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line["fields"] = fields
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """:data:`FORMAT`, word for word as ``logging.Formatter(FORMAT)`` writes it, with the time formatted once a second.

    Why: a line per accepted message is written on the event loop, and ``strftime`` of the local time was a
    fifth of writing it; every line of one second shares that part (the milliseconds are added per line).

    >>> rec = logging.LogRecord("mailsvc.web", logging.INFO, "", 0, "accepted id=%s", ("a1",), None)
    >>> TextFormatter().format(rec) == logging.Formatter(FORMAT).format(rec)
    True
    """

    def __init__(self) -> None:
        super().__init__(FORMAT)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime(self.default_time_format, self.converter(record.created)))
        return f"{self._second[1]},{int(record.msecs):03d}"  # logging's default_msec_format, "%s,%03d"


class _Handler(logging.StreamHandler[TextIO]):
    """The stderr handler this setup adds (and may re-format); any other handler is left alone."""


def _formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"MAILSVC_LOG_FORMAT: {fmt!r} is not text or json")


def configure_logging(level: int | str = logging.INFO, *, attach_to: str = "", fmt: str = "text") -> None:
    """Log ``mailsvc.*`` at ``level`` (at INFO: a line per accepted request, a line per group of delivery outcomes).

    Other libraries log at WARNING, or at ``level`` when it is more verbose, except
    :data:`QUIET_LOGGERS`, which never go below WARNING. A handler is added to the
    ``attach_to`` logger (root by default) only if it has none: an embedding app,
    pytest or hypercorn's own loggers may already have theirs. ``fmt`` (``MAILSVC_LOG_FORMAT``)
    is ``text`` or ``json``; asked again with another, the handler added here changes format.
    """
    formatter = _formatter(fmt)
    if isinstance(level, str):
        name = level.upper()
        resolved = logging.getLevelName(name)
        if not isinstance(resolved, int):
            raise ValueError(f"unknown log level {level!r}")
        level = resolved
    target = logging.getLogger(attach_to or None)
    if not target.handlers:
        target.addHandler(_Handler())
    for handler in target.handlers:
        if isinstance(handler, _Handler):  # ours; an embedding app's or pytest's keep their format
            handler.setFormatter(formatter)
    root = logging.getLogger()
    root.setLevel(min(level, root.level or logging.WARNING))
    logging.getLogger("mailsvc").setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, level))
