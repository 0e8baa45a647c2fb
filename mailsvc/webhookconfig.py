"""Webhook endpoints as the operator configures them (``MAILSVC_WEBHOOKS``): checked once, at start-up.

Why only in settings: a webhook target is a URL the service POSTs to from inside your network. Chosen by an
API caller, it would be a server-side request forgery; chosen by the operator, it is configuration. Only
``https`` is allowed, or ``http`` to this machine (for development). The secret is Standard Webhooks'
``whsec_<base64>``; receivers verify with any Standard Webhooks library.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = ["EVENT_TYPES", "WebhookEndpoint"]

#: Every type an event can have: the recipient states, and ``unsubscribed`` (an address, no message).
EVENT_TYPES: frozenset[str] = frozenset(
    {
        "queued",
        "scheduled",
        "sending",
        "delivered",
        "deferred",
        "failed",
        "expired",
        "bounced",
        "complained",
        "suppressed",
        "cancelled",
        "unsubscribed",
    }
)


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebhookEndpoint(BaseModel):
    """One endpoint: where, which event types (none listed: all), its signing secret, events per request.

    >>> WebhookEndpoint(name="crm", url="https://crm.example.com/hooks/mail",
    ...                 secret="whsec_" + "A" * 32, events=["delivered", "bounced"]).batch
    1
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")]
    url: str
    secret: SecretStr
    events: tuple[str, ...] = ()
    batch: int = Field(default=1, ge=1, le=100)  # >1: up to this many events per POST, as one JSON array

    @field_validator("url")
    @classmethod
    def _target(cls, v: str) -> str:
        parts = urlsplit(v)
        if any(c in v for c in "\r\n\x00 ") or parts.username or parts.password or parts.fragment:
            raise ValueError("must be a plain URL without credentials, spaces or a fragment")
        if parts.scheme == "https" and parts.hostname:
            return v
        if parts.scheme == "http" and parts.hostname and _loopback(parts.hostname):
            return v
        raise ValueError("must be https:// (http:// only to 127.0.0.1 or localhost)")

    @field_validator("secret")
    @classmethod
    def _whsec(cls, v: SecretStr) -> SecretStr:
        raw = v.get_secret_value()
        if not re.fullmatch(r"whsec_[A-Za-z0-9+/]+={0,2}", raw):
            raise ValueError("must be whsec_ followed by base64 (e.g. whsec_$(openssl rand -base64 32))")
        try:
            key = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be whsec_ followed by valid base64") from None
        if len(key) < 24:
            raise ValueError("must hold at least 24 random bytes (openssl rand -base64 32)")
        return v

    @field_validator("events")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(v) - EVENT_TYPES)
        if unknown:
            raise ValueError(f"unknown event types {unknown}; known: {', '.join(sorted(EVENT_TYPES))}")
        return tuple(dict.fromkeys(v))
