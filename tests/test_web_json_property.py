"""Property: any JSON value in any field of either POST route is a 202 or a clear 4xx, never a 500.

Values are drawn from everything Python's JSON parser accepts: any depth (past the
32-level cap too), any Unicode including lone surrogates (``json.dumps`` with
``ensure_ascii`` writes them as ``\\ud800`` escapes), control characters, NaN and
huge numbers, odd keys; sometimes sent as raw UTF-8 with the surrogates encoded
(which is not UTF-8, hence a 400). A refusal is ``application/problem+json``, and a
422 names the field. The real app runs on a tmp SQLite outbox (no worker).
"""

from __future__ import annotations

import asyncio
import json
import math
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.servers import RecordingHandler
from tests.webkit import AUTH, Svc, running

TEXT = st.text(st.characters(codec=None, exclude_categories=[]), max_size=12)  # lone surrogates included
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.sampled_from(["ann@example.com", "welcome", "thank_you", "text/plain", "aGk=", "{{ name }}", "{%", "X-Ok"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=12,
)


def _deep(value: Any, depth: int, as_list: bool) -> Any:
    for _ in range(depth):
        value = [value] if as_list else {"k": value}
    return value


ANY = st.one_of(
    VALUES,
    st.builds(_deep, VALUES, st.integers(min_value=25, max_value=300), st.booleans()),
)

MESSAGE = {"to": "ann@example.com", "subject": "s", "text": "t"}
MESSAGE_FIELDS = [
    "to",
    "cc",
    "bcc",
    "reply_to",
    "sender",
    "subject",
    "text",
    "html",
    "template",
    "context",
    "attachments",
    "headers",
    "attachments[0].filename",
    "attachments[0].content_type",
    "attachments[0].content",
    "headers.X-Any",
    "context.name",
    "unknown",
]
BULK = {"subject": "s", "text": "t", "recipients": [{"to": "a@example.com"}]}
BULK_FIELDS = [
    "subject",
    "text",
    "html",
    "template",
    "sender",
    "reply_to",
    "attachments",
    "headers",
    "recipients",
    "recipients[0]",
    "recipients[0].to",
    "recipients[0].context",
    "recipients[0].context.name",
    "recipients[0].unknown",
    "unknown",
]


def _put(body: dict[str, Any], path: str, value: Any) -> None:
    """Set ``path`` (``a``, ``a.b``, ``a[0].b``) in ``body``, replacing whatever is in the way."""
    parts: list[Any] = [0 if p == "0" else p for p in path.replace("[0]", ".0").split(".")]
    node: Any = body
    for part, nxt in zip(parts, parts[1:], strict=False):
        child = node[part] if isinstance(node, list) or part in node else None
        if nxt == 0 and not (isinstance(child, list) and child):
            child = [{}]
        elif nxt != 0 and not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    node[parts[-1]] = value


def _encode(body: dict[str, Any], raw: bool) -> bytes:
    if raw:  # UTF-8 as written, surrogates and all: not valid UTF-8 when a surrogate is in it
        return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(body).encode("ascii")


def _check_answer(status: int, content_type: str, problem: Any, body: bytes) -> None:
    assert status in (202, 400, 413, 422), (status, problem, body[:500])
    if status != 202:
        assert content_type == "application/problem+json", (status, content_type, body[:300])
        assert problem["status"] == status
    if status == 422:
        assert problem["errors"] and all(e["field"] and e["reason"] for e in problem["errors"]), problem


def _run_property(path: str, base: dict[str, Any], fields: list[str], tmp_path: Path) -> list[int]:
    statuses: list[int] = []
    with asyncio.Runner() as runner:
        stack = AsyncExitStack()
        svc: Svc = runner.run(
            stack.enter_async_context(
                running(9, RecordingHandler(), tmp_path, workers=0, rate_limit=0, allow_sender=True)
            )
        )
        try:

            @settings(
                max_examples=200,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(st.dictionaries(st.sampled_from(fields), ANY, min_size=1, max_size=2), st.booleans())
            def check(changes: dict[str, Any], raw: bool) -> None:
                body = json.loads(json.dumps(base))
                for field, value in changes.items():
                    _put(body, field, value)
                data = _encode(body, raw)
                headers = {**AUTH, "Content-Type": "application/json"}
                r = runner.run(svc.client.post(path, data=data, headers=headers))
                text = runner.run(r.get_data(as_text=False))
                problem = json.loads(text) if r.mimetype.endswith("json") else None
                statuses.append(r.status_code)
                _check_answer(r.status_code, r.mimetype, problem, data)

            check()
        finally:
            runner.run(stack.aclose())
    return statuses


def test_any_json_in_any_message_field_is_never_a_500(tmp_path: Path) -> None:
    statuses = _run_property("/api/messages", MESSAGE, MESSAGE_FIELDS, tmp_path)
    assert 422 in statuses and 202 in statuses, sorted(set(statuses))


def test_any_json_in_any_bulk_field_is_never_a_500(tmp_path: Path) -> None:
    statuses = _run_property("/api/messages/bulk", BULK, BULK_FIELDS, tmp_path)
    assert 422 in statuses and 202 in statuses, sorted(set(statuses))


def test_the_values_reach_what_the_issue_names() -> None:
    """The strategy can draw what broke the service before: a lone surrogate, 256 levels, NaN."""
    assert _deep(1, 256, True)[0] is not None
    assert json.dumps("\ud800") == '"\\ud800"'
    assert math.isnan(json.loads(json.dumps(float("nan"))))
