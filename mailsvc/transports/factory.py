"""Which transport a :class:`MailConfig` sends through: SMTP, or a factory named by ``MAIL_TRANSPORT``.

Why a factory and not an instance: the pool opens up to ``MAIL_POOL_SIZE``
connections and ``mail.connect()`` one more, each its own transport, so what is
plugged in is the thing that makes them (as Django's ``EMAIL_BACKEND`` names a
class, not an object). A factory takes the config and returns a fresh
:class:`Transport`; a transport class whose constructor takes the config is one::

    Mail(app, transport=lambda config: MemoryTransport(outbox=sent))   # in code
    MAIL_TRANSPORT = "mailsvc.transports.memory:MemoryTransport"       # as a setting

A bad ``MAIL_TRANSPORT`` fails when the mail state is built (``Mail(app)``, the
worker's start), with a :class:`ConfigError` saying what to fix.

    >>> resolve("mailsvc.transports.memory:MemoryTransport").__name__
    'MemoryTransport'
    >>> resolve("ses").__name__
    'SESTransport'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from ..config import MailConfig
from ..errors import ConfigError
from .base import Transport
from .smtp import SMTPTransport

__all__ = ["ALIASES", "TransportFactory", "factory_for", "resolve"]

TransportFactory = Callable[[MailConfig], Transport]
_SETTING = "MAIL_TRANSPORT"
# Short names for the transports mailsvc ships (the SES one imports aiobotocore only when chosen).
ALIASES = {
    "smtp": "mailsvc.transports.smtp:SMTPTransport",
    "memory": "mailsvc.transports.memory:MemoryTransport",
    "ses": "mailsvc.transports.ses:SESTransport",
}


def factory_for(config: MailConfig, override: TransportFactory | None = None) -> TransportFactory:
    """``override`` if given, else the factory ``MAIL_TRANSPORT`` names, else SMTP."""
    if override is not None:
        return override
    if config.transport:
        return resolve(config.transport)
    return SMTPTransport


def resolve(path: str) -> TransportFactory:
    """Import ``package.module:attribute`` (or ``package.module.attribute``) and check it can be called."""
    module_name, attr = _split(ALIASES.get(path, path))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            _SETTING,
            f"cannot import module {module_name!r} ({exc}); check the spelling and that the package is "
            "installed, e.g. 'mailsvc.transports.memory:MemoryTransport'",
        ) from exc
    target: object = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(
                _SETTING, f"module {module_name!r} has no attribute {attr!r}; name a transport class or factory there"
            ) from None
    if not callable(target):
        raise ConfigError(
            _SETTING, f"{path!r} is a {type(target).__name__}, not a transport class or factory taking a MailConfig"
        )
    return cast(TransportFactory, target)


def _split(path: str) -> tuple[str, str]:
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(
            _SETTING, f"{path!r}: write 'package.module:Factory', e.g. 'mailsvc.transports.memory:MemoryTransport'"
        )
    return module_name, attr
