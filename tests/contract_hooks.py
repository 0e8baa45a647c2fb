"""schemathesis hooks for tests/test_openapi_contract.py (loaded with ``SCHEMATHESIS_HOOKS=tests.contract_hooks``).

The two formats the document names that JSON Schema lacks: ``mailbox``
(``'a@b.example'`` or ``'Name <a@b.example>'``), drawn from valid mailboxes
(ASCII and internationalised domains, dot-atom local parts, display names), and
``jinja``, drawn from template strings that compile and read no context name.
"""

from __future__ import annotations

import itertools
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis
from hypothesis import strategies as st

from mailsvc.config import WebConfig
from mailsvc.errors import MessageError
from mailsvc.labels import parse_send_at
from mailsvc.web.api import IDEMPOTENCY_KEY_PATTERN
from mailsvc.web.schemas import JINJA_FORMAT, MAILBOX_FORMAT

_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_SERIAL = itertools.count()
_MAX_RECIPIENTS = WebConfig().max_recipients  # the contract deployment keeps the default

_label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True).filter(lambda s: "--" not in s)
_domain = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(_label, min_size=1, max_size=2),
    st.sampled_from(["com", "org", "example", "de", "bücher.example"]),
)
_local = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,12}(?:\.[A-Za-z0-9_-]{1,8})?", fullmatch=True)
_addr = st.builds("{}@{}".format, _local, _domain)
_name = st.text(st.characters(categories=["L", "N"], include_characters=" .-"), max_size=20)
MAILBOXES = st.one_of(_addr, st.builds("{} <{}>".format, _name.map(str.strip).filter(bool), _addr))

schemathesis.openapi.format(MAILBOX_FORMAT, MAILBOXES)

# Template strings that compile and read no context name: text without Jinja's delimiters, and literal expressions.
_plain = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="{}"), max_size=30)
_literal = st.text(st.characters(categories=["L", "N", "Zs"]), max_size=10).map(lambda t: "{{ " + repr(t) + " }}")
TEMPLATES = st.lists(st.one_of(_plain, _literal), max_size=4).map("".join)
schemathesis.openapi.format(JINJA_FORMAT, TEMPLATES)


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    """A valid ``Idempotency-Key`` made unique per request, as the document asks of clients.

    Why: generation draws the same short key (``"0"``) for different bodies, and
    reusing a key for a different request is refused (422, as the IETF draft on
    the header says) for a reason of state no schema can state. Invalid keys
    (negative cases) are left as drawn.
    """
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and _KEY.fullmatch(key):
        headers["Idempotency-Key"] = f"{key[:160]}.{next(_SERIAL)}.{uuid.uuid4().hex}"
    positive = case.meta is not None and not case.meta.generation.mode.is_negative
    if positive and isinstance(case.body, dict):
        _fit_recipients(case.body)
        _fit_send_at(case.body)
    if positive and isinstance(case.query, dict):
        # A cursor is state (a page's "next"), as an idempotency key is: a made-up one is refused (422).
        # /api/events' "since" is one too (and each backend reads only its own kind).
        case.query.pop("cursor", None)
        if case.path == "/api/events":
            case.query.pop("since", None)


def _fit_send_at(body: dict[str, Any]) -> None:
    """A send_at past MAILSVC_SCHEDULE_HORIZON (stated in words: it moves with the clock) brought inside it."""
    value = body.get("send_at")
    if isinstance(value, str):
        try:
            at = parse_send_at(value)
        except MessageError:
            return
        if at > datetime.now(UTC) + timedelta(days=1):
            body["send_at"] = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fit_recipients(body: dict[str, Any]) -> None:
    """Drop cc, then bcc, entries past the total the document states in words (JSON Schema cannot sum).

    A client reading the document does the same; each list stays schema-valid (none has a minimum).
    """
    to = body.get("to")
    room = _MAX_RECIPIENTS - (len(to) if isinstance(to, list) else 1)
    for name in ("cc", "bcc"):
        value = body.get(name)
        if value is None:
            continue
        size = len(value) if isinstance(value, list) else 1
        if size > room:
            body[name] = value[: max(room, 0)] if isinstance(value, list) else []
            size = max(room, 0)
        room -= size
