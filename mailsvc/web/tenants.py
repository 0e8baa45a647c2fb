"""Tenants and scopes: which tenant each API key acts for, and what it may do.

Why tenants and not keys: a tenant keeps its mail while its keys rotate. Every key
belongs to one tenant; messages and batches are owned by the tenant that created
them, and a tenant never sees another's. A key in ``MAILSVC_API_KEYS`` is a tenant
of its own (named by its :func:`key_id`, so mail queued before tenants keeps
answering it); ``MAILSVC_API_KEYS_FILE`` names tenants with several keys and scopes::

    {
      "shop":  {"keys": ["key-2025", {"key": "key-dash", "scopes": ["read"]}]},
      "ops":   {"keys": [{"key": "key-ops", "scopes": ["admin"]}]}
    }

A key without ``scopes`` may ``send`` and ``read``; ``admin`` may do both and sees
every tenant's mail. Anything wrong in the file is a :class:`ConfigError` naming
``MAILSVC_API_KEYS_FILE`` and where, never the key itself.

>>> [k.tenant for k in key_table(WebConfig(api_keys=(SecretStr("s3cret"),)))] == [key_id("s3cret")]
True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError

from ..config import WebConfig
from ..errors import ConfigError

__all__ = ["ALL_SCOPES", "DEFAULT_SCOPES", "ApiKey", "Scope", "key_id", "key_table", "read_keys_file"]

FILE_SETTING = "MAILSVC_API_KEYS_FILE"
_MAX_FILE_BYTES = 1024 * 1024


class Scope(StrEnum):
    SEND = "send"  # POST /api/messages, /api/messages/bulk, the form
    READ = "read"  # GET /api/messages/<id>, /api/batches/<id>
    ADMIN = "admin"  # everything, and every tenant's mail


DEFAULT_SCOPES = frozenset({Scope.SEND, Scope.READ})
ALL_SCOPES = frozenset(Scope)


def key_id(key: str) -> str:
    """A non-secret name for a key: 12 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One configured key: the tenant it acts for and what it may do (``admin`` implies the rest)."""

    secret: SecretStr
    tenant: str
    scopes: frozenset[Scope] = DEFAULT_SCOPES

    @property
    def id(self) -> str:
        return key_id(self.secret.get_secret_value())


TenantName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
# Printable ASCII without spaces: what a Bearer header carries intact.
KeyText = Annotated[str, Field(pattern=r"^[\x21-\x7e]+$")]


class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: KeyText
    scopes: Annotated[frozenset[Scope], Field(min_length=1)] = DEFAULT_SCOPES


def _entry(value: Any) -> Any:
    """``"<key>"`` is short for ``{"key": "<key>"}`` (send and read)."""
    return {"key": value} if isinstance(value, str) else value


class _Tenant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: Annotated[list[Annotated[_KeyEntry, BeforeValidator(_entry)]], Field(min_length=1)]


_FILE = TypeAdapter(dict[TenantName, _Tenant])


def read_keys_file(path: Path) -> list[ApiKey]:
    """The keys a tenants file names; :class:`ConfigError` (naming the file and where) if it is not usable."""
    try:
        raw = path.read_bytes()[: _MAX_FILE_BYTES + 1]
    except OSError as exc:
        raise ConfigError(FILE_SETTING, f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_FILE_BYTES:
        raise ConfigError(FILE_SETTING, f"{str(path)!r} is larger than {_MAX_FILE_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError says where, never what
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise ConfigError(FILE_SETTING, f"{str(path)!r} is not JSON{where}") from None
    try:
        tenants = _FILE.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(FILE_SETTING, f"{str(path)!r}: {_first_error(exc)}") from None
    if not tenants:
        raise ConfigError(FILE_SETTING, f"{str(path)!r} names no tenants; see the README's Tenants section")
    keys: list[ApiKey] = []
    for name, tenant in tenants.items():
        keys.extend(ApiKey(SecretStr(e.key), name, e.scopes) for e in tenant.keys)
    return keys


def _first_error(exc: ValidationError) -> str:
    """Where and what, without the input (which may be a key)."""
    err = exc.errors(include_input=False, include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    shape = 'the file maps tenant names to {"keys": [...]}; see the README\'s "Tenants" section'
    return f"{loc or 'the top level'}: {err['msg']} ({shape})"


def key_table(web: WebConfig) -> list[ApiKey]:
    """Every key the service accepts: ``MAILSVC_API_KEYS`` (a tenant each) and the tenants file.

    Raises :class:`ConfigError` for a file that cannot be used, a key listed twice
    (it could act for two tenants), or a file tenant named like a key id of
    ``MAILSVC_API_KEYS`` (the two would share their mail).
    """
    keys = [ApiKey(k, key_id(k.get_secret_value())) for k in web.api_keys]
    single = {k.tenant for k in keys}
    if web.api_keys_file is not None:
        from_file = read_keys_file(web.api_keys_file)
        clash = sorted({k.tenant for k in from_file} & single)
        if clash:
            raise ConfigError(
                FILE_SETTING,
                f"tenant {clash[0]!r} is also the key id of a key in MAILSVC_API_KEYS; rename the tenant",
            )
        keys.extend(from_file)
    _refuse_duplicates(keys)
    return keys


def _refuse_duplicates(keys: Sequence[ApiKey]) -> None:
    seen: dict[str, str] = {}
    for k in keys:
        secret = k.secret.get_secret_value()
        if secret in seen:
            setting = "MAILSVC_API_KEYS" if seen[secret] == k.tenant == k.id else FILE_SETTING
            raise ConfigError(
                setting,
                f"the key with id {k.id} is listed twice (tenants {seen[secret]!r} and {k.tenant!r}); "
                "a key belongs to one tenant, once",
            )
        seen[secret] = k.tenant
