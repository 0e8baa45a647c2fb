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

import logging

__all__ = ["FORMAT", "QUIET_LOGGERS", "configure_logging"]

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Loggers whose DEBUG/INFO output can carry SQL parameters, SMTP lines, HTTP/2 headers or (botocore) SES
# request bodies: the raw message, base64.
QUIET_LOGGERS = ("aiosqlite", "asyncpg", "aiosmtplib", "mail.log", "hpack", "h2", "botocore", "aiobotocore")


def configure_logging(level: int | str = logging.INFO, *, attach_to: str = "") -> None:
    """Log ``mailsvc.*`` at ``level`` (at INFO: a line per accepted request, a line per group of delivery outcomes).

    Other libraries log at WARNING, or at ``level`` when it is more verbose, except
    :data:`QUIET_LOGGERS`, which never go below WARNING. A handler is added to the
    ``attach_to`` logger (root by default) only if it has none: an embedding app,
    pytest or hypercorn's own loggers may already have theirs.
    """
    if isinstance(level, str):
        name = level.upper()
        resolved = logging.getLevelName(name)
        if not isinstance(resolved, int):
            raise ValueError(f"unknown log level {level!r}")
        level = resolved
    target = logging.getLogger(attach_to or None)
    if not target.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        target.addHandler(handler)
    root = logging.getLogger()
    root.setLevel(min(level, root.level or logging.WARNING))
    logging.getLogger("mailsvc").setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, level))
