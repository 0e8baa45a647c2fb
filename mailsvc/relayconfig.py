"""Several named relays and the routes between them (``MAILSVC_RELAYS_FILE``), read and checked once.

Why a file and not more MAIL_* variables: each relay needs a whole MAIL_* set of its own
(server, port, TLS, credentials or OAuth2, transport, pool size) plus its rate limits, and
routes are lists; JSON says that plainly. Each relay's settings are read by
:meth:`MailConfig.from_mapping`, so they are checked exactly as the MAIL_* settings are, and
a relay never inherits another's credentials. Without the file there is one relay, ``default``,
from the MAIL_* settings: today's behaviour.

    {"relays": {"primary": {"MAIL_SERVER": "smtp.example.com", "MAIL_PORT": 587, "MAIL_USE_TLS": true,
                            "rate": {"per_second": 50, "per_day": 100000, "max_recipients": 50}},
                "fallback": {"MAIL_SERVER": "smtp.backup.example.net"}},
     "routes": {"transactional": ["primary", "fallback"], "default": ["primary", "fallback"]}}

>>> cfg = RelaysConfig.single(MailConfig())
>>> cfg.route("bulk"), cfg.names
(('default',), ('default',))
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import MailConfig
from .errors import ConfigError

__all__ = ["DEFAULT_RELAY", "RelayRate", "RelaySpec", "RelaysConfig", "load_relays"]

SETTING = "MAILSVC_RELAYS_FILE"
DEFAULT_RELAY = "default"
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAIL_KEYS = frozenset(MailConfig().to_mapping())
_RATE_KEYS = ("per_second", "per_day", "max_recipients")
_MAX_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class RelayRate:
    """A relay's limits; None: unlimited. ``per_second`` paces messages, ``per_day`` counts them per UTC day."""

    per_second: float | None = None
    per_day: int | None = None
    max_recipients: int | None = None  # per transaction: a message's recipients are split over several


@dataclass(frozen=True, slots=True)
class RelaySpec:
    name: str
    mail: MailConfig
    rate: RelayRate = RelayRate()


@dataclass(frozen=True, slots=True)
class RelaysConfig:
    """The relays by name and the routes (ordered relay names) by stream; ``default`` always exists."""

    relays: Mapping[str, RelaySpec]
    routes: Mapping[str, tuple[str, ...]]

    @classmethod
    def single(cls, mail: MailConfig) -> RelaysConfig:
        """One relay named ``default`` from the MAIL_* settings: the service without a relays file."""
        return cls({DEFAULT_RELAY: RelaySpec(DEFAULT_RELAY, mail)}, {DEFAULT_RELAY: (DEFAULT_RELAY,)})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.relays)

    def route(self, key: str | None) -> tuple[str, ...]:
        """The relays for a message's route key; a key with no route (or none) takes the ``default`` route."""
        if key is not None:
            found = self.routes.get(key)
            if found is not None:
                return found
        return self.routes[DEFAULT_RELAY]


def _fail(path: str, reason: str) -> ConfigError:
    return ConfigError(SETTING, f"{path}: {reason}")


def _rate(where: str, raw: Any) -> RelayRate:
    if not isinstance(raw, dict):
        raise _fail(where, "must be an object with per_second, per_day, max_recipients")
    for key in raw:
        if key not in _RATE_KEYS:
            raise _fail(f"{where}.{key}", f"unknown limit; the limits are {', '.join(_RATE_KEYS)}")
    values: dict[str, Any] = {}
    for key in _RATE_KEYS:
        v = raw.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0 or v != v or v == float("inf"):
            raise _fail(f"{where}.{key}", f"must be a positive number, got {json.dumps(v)[:40]}")
        if key != "per_second" and v != int(v):
            raise _fail(f"{where}.{key}", f"must be a whole number, got {v}")
        values[key] = float(v) if key == "per_second" else int(v)
    return RelayRate(**values)


def _relay(name: str, raw: Any) -> RelaySpec:
    where = f"relays.{name}"
    if not isinstance(raw, dict):
        raise _fail(where, "must be an object of MAIL_* settings")
    for key in raw:
        if key != "rate" and key not in _MAIL_KEYS:
            raise _fail(f"{where}.{key}", "not a MAIL_* setting (DKIM signs at build time, for every relay)")
        if "DKIM" in key:
            raise _fail(f"{where}.{key}", "DKIM is set once, with the MAIL_* settings: every relay sends signed mail")
    try:
        mail = MailConfig.from_mapping({k: v for k, v in raw.items() if k != "rate"})
    except ConfigError as exc:
        raise _fail(f"{where}.{exc.setting}", exc.reason) from None
    return RelaySpec(name, mail, _rate(f"{where}.rate", raw.get("rate", {})))


def parse_relays(doc: Any) -> RelaysConfig:
    """Check a relays document (parsed JSON); :class:`ConfigError` names the JSON path and why."""
    if not isinstance(doc, dict):
        raise _fail("(top)", 'must be an object with "relays" and "routes"')
    for key in doc:
        if key not in ("relays", "routes"):
            raise _fail(key, 'unknown key; the file has "relays" and "routes"')
    raw_relays = doc.get("relays")
    if not isinstance(raw_relays, dict) or not raw_relays:
        raise _fail("relays", "must be a non-empty object of named relays")
    relays: dict[str, RelaySpec] = {}
    for name, raw in raw_relays.items():
        if not _NAME.match(name):
            raise _fail(f"relays.{name[:70]!r}", "a relay name is 1-64 of A-Z a-z 0-9 . _ -")
        relays[name] = _relay(name, raw)
    raw_routes = doc.get("routes", {})
    if not isinstance(raw_routes, dict):
        raise _fail("routes", "must be an object of route name -> list of relay names")
    routes: dict[str, tuple[str, ...]] = {}
    for key, names in raw_routes.items():
        where = f"routes.{key[:70]}"
        if not _NAME.match(key):
            raise _fail(where, "a route name is 1-64 of A-Z a-z 0-9 . _ - (a bulk request's stream names it)")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise _fail(where, "must be a non-empty list of relay names")
        for i, n in enumerate(names):
            if n not in relays:
                raise _fail(f"{where}[{i}]", f"no relay named {n[:70]!r}; the relays are {', '.join(relays)}")
        if len(set(names)) != len(names):
            raise _fail(where, "names a relay twice")
        routes[key] = tuple(names)
    if DEFAULT_RELAY not in routes:
        if DEFAULT_RELAY in relays:
            routes[DEFAULT_RELAY] = (DEFAULT_RELAY,)
        else:
            raise _fail("routes.default", "missing: the route of mail whose stream has no route of its own")
    return RelaysConfig(relays, routes)


def load_relays(path: Path | None, mail: MailConfig) -> RelaysConfig:
    """The relays file at ``path``, or the single ``default`` relay from ``mail`` when there is none."""
    if path is None:
        return RelaysConfig.single(mail)
    try:
        with path.open("rb") as f:
            text = f.read(_MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(SETTING, f"cannot read {path}: {exc.strerror or exc}") from None
    if len(text) > _MAX_BYTES:
        raise ConfigError(SETTING, f"{path} is larger than 1 MiB")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(SETTING, f"{path} is not JSON: {exc}") from None
    return parse_relays(doc)
