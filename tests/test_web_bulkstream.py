"""The bulk route's streaming path: the body walked a recipient at a time, stored a chunk at a time.

The walk must see exactly what ``json.loads`` sees, the fingerprint must be the one
the whole validated body gives, and a failure in any chunk must leave nothing queued.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from mailsvc.config import WebConfig
from mailsvc.web.bulkstream import CHUNK, BulkRequest
from mailsvc.web.compose import fingerprint_of
from mailsvc.web.jsonscan import BulkBody
from mailsvc.web.problems import ProblemException
from mailsvc.web.schemas import BulkIn, CheckContext
from tests.servers import RecordingHandler
from tests.webkit import AUTH, running

BODIES: list[Any] = [
    {"subject": "s", "text": "t", "recipients": [{"to": "a@example.com"}]},
    {
        "recipients": [{"to": ["a@example.com", "B <b@example.com>"], "context": {"x": [1, {"y": "]},["}]}}],
        "subject": "Hi {{ x }}",
        "html": "<p>ü 😀</p>",
        "headers": {"List-Unsubscribe": "<mailto:u@example.com>"},
        "attachments": [
            {"filename": "a.txt", "content_type": "text/plain", "content": base64.b64encode(b"hello").decode()}
        ],
    },
    {
        "subject": "{{ name }}",
        "text": "x",
        "recipients": [{"to": f"u{i}@example.com", "context": {"name": f"n{i}"}} for i in range(7)],
        "reply_to": "r@example.com",
    },
]


@pytest.mark.parametrize("data", BODIES)
@pytest.mark.parametrize("indent", [None, 2])
def test_walk_sees_what_json_loads_sees(data: Any, indent: int | None) -> None:
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    body = BulkBody.parse(f" \n{text}\r\n")
    expected = json.loads(text)
    assert [r for _, r in body.recipients()] == expected.pop("recipients")
    assert body.head == expected


@pytest.mark.parametrize("data", BODIES)
def test_fingerprint_is_the_whole_body_s(data: Any) -> None:
    ctx = CheckContext(WebConfig())
    req = BulkRequest.check(BulkBody.parse(json.dumps(data)), ctx)
    whole = BulkIn.model_validate(data, context=ctx)
    assert req.fingerprint == fingerprint_of("bulk", whole.model_dump_json())
    assert req.count == len(data["recipients"])


def test_duplicate_keys_last_wins_as_in_json_loads() -> None:
    text = '{"recipients": [{"to": "a@example.com"}], "subject": "s", "recipients": "x", "recipients": [1, 2]}'
    body = BulkBody.parse(text)
    assert [r for _, r in body.recipients()] == [1, 2] and "recipients" not in body.head


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        '{"recipients": [1, 2}',
        '{"recipients": [1 2]}',
        '{"a": 1,}',
        '{"a" 1}',
        '{"a": 1} x',
        '{"recipients": []',
        "[1, 2",
        '{"a": tru}',
    ],
)
def test_malformed_bodies_are_value_errors(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)  # the premise
    with pytest.raises(ValueError):
        BulkBody.parse(text)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[1]", "body"),
        ('{"subject": "s", "text": "t"}', "recipients"),
        ('{"subject": "s", "text": "t", "recipients": {"to": "a@example.com"}}', "recipients"),
        ('{"subject": "s", "text": "t", "recipients": []}', "recipients"),
        ('{"text": "t", "recipients": [{"to": "a@example.com"}]}', "subject"),
        (
            '{"subject": "s", "text": "t", "recipients": [{"to": "a@example.com"}, {"to": "bad"}]}',
            "recipients[1].to[0]",
        ),
        ('{"subject": "s", "text": "t", "recipients": [{"to": "a@example.com", "extra": 1}]}', "recipients[0].extra"),
    ],
)
def test_invalid_requests_name_the_field(text: str, field: str) -> None:
    with pytest.raises(ProblemException) as info:
        BulkRequest.check(BulkBody.parse(text), CheckContext(WebConfig()))
    assert info.value.status == 422
    assert field in [e.field for e in info.value.errors], info.value.errors


async def test_many_chunks_stored_in_order_and_delivered(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    n = 2 * CHUNK + 3
    body = {
        "subject": "Hi {{ i }}",
        "text": "n={{ i }}",
        "recipients": [{"to": f"u{i}@example.com", "context": {"i": i}} for i in range(n)],
    }
    async with running(smtp_port, handler, tmp_path) as svc:
        r = await svc.client.post("/api/messages/bulk", json=body, headers=AUTH)
        assert r.status_code == 202, await r.get_data(as_text=True)
        data = await r.get_json()
        assert data["count"] == n
        got = await svc.delivered(n)
        assert sorted((g.rcpt_tos[0], g.message["Subject"]) for g in got) == sorted(
            (f"u{i}@example.com", f"Hi {i}") for i in range(n)
        )
        await svc.settle()
        r = await svc.client.get(f"/api/batches/{data['batch_id']}", headers=AUTH)
        assert (await r.get_json())["counts"] == {"delivered": n}


async def test_a_failure_in_a_later_chunk_queues_nothing(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    n = 2 * CHUNK + 3
    recipients: list[dict[str, Any]] = [{"to": f"u{i}@example.com", "context": {"name": f"U{i}"}} for i in range(n)]
    recipients[CHUNK + 7] = {"to": "x@example.com", "context": {}}  # renders nothing for name: StrictUndefined
    body = {"subject": "Hi {{ name }}", "text": "x", "recipients": recipients}
    async with running(smtp_port, handler, tmp_path, workers=0) as svc:
        r = await svc.client.post("/api/messages/bulk", json=body, headers=AUTH | {"Idempotency-Key": "k1"})
        assert r.status_code == 422, await r.get_data(as_text=True)
        problem = json.loads(await r.get_data(as_text=True))
        assert [e["field"] for e in problem["errors"]] == [f"recipients[{CHUNK + 7}].context"]
        assert await svc.pending() == 0
        # The failed request did not take its idempotency key; the fixed one is stored whole.
        recipients[CHUNK + 7] = {"to": "x@example.com", "context": {"name": "X"}}
        r = await svc.client.post("/api/messages/bulk", json=body, headers=AUTH | {"Idempotency-Key": "k1"})
        assert r.status_code == 202 and (await r.get_json())["count"] == n
        again = await svc.client.post("/api/messages/bulk", json=body, headers=AUTH | {"Idempotency-Key": "k1"})
        assert again.headers["Idempotent-Replayed"] == "true"
        assert (await again.get_json())["batch_id"] == (await r.get_json())["batch_id"]
        assert await svc.pending() == n


def test_no_fingerprint_without_an_idempotency_key() -> None:
    req = BulkRequest.check(BulkBody.parse(json.dumps(BODIES[2])), CheckContext(WebConfig()), keyed=False)
    assert req.fingerprint is None and req.count == 7


@pytest.mark.parametrize("size", [1, 3, 7, 250])
async def test_kept_recipients_and_a_second_walk_give_the_same_chunks(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small body's second walk goes over the first walk's models; a large one's parses again: same messages."""
    import mailsvc.web.bulkstream as bulkstream

    text = json.dumps(BODIES[2])
    ctx = CheckContext(WebConfig())

    async def chunked() -> tuple[bool, list[list[tuple[int, str, str]]]]:
        req = BulkRequest.check(BulkBody.parse(text), ctx)
        seen: list[list[tuple[int, str, str]]] = []
        async for chunk in req.chunks(lambda i, r: (i, r.to[0], r.context["name"]), size):  # type: ignore[arg-type,return-value]
            seen.append(list(chunk))  # type: ignore[arg-type]
        return req.models is not None, seen

    kept, from_models = await chunked()
    monkeypatch.setattr(bulkstream, "KEEP_MODELS_CHARS", 10)
    walked, from_text = await chunked()
    assert kept and not walked
    assert from_models == from_text
    assert [x for chunk in from_models for x in chunk] == [(i, f"u{i}@example.com", f"n{i}") for i in range(7)]
    assert [len(c) for c in from_models] == [min(size, 7 - k) for k in range(0, 7, size)]


def test_many_small_recipients_are_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body under the size bound but of many tiny entries (180,000 fit in 4 MiB) keeps none of them."""
    import mailsvc.web.bulkstream as bulkstream

    text = json.dumps(BODIES[2])
    ctx = CheckContext(WebConfig())
    assert BulkRequest.check(BulkBody.parse(text), ctx).models is not None
    monkeypatch.setattr(bulkstream, "KEEP_MODELS_MAX", 6)  # BODIES[2] has 7
    assert BulkRequest.check(BulkBody.parse(text), ctx).models is None
    monkeypatch.setattr(bulkstream, "KEEP_MODELS_MAX", 7)
    assert len(BulkRequest.check(BulkBody.parse(text), ctx).models or []) == 7


async def test_the_second_walk_goes_over_the_kept_recipients_not_the_text() -> None:
    req = BulkRequest.check(BulkBody.parse(json.dumps(BODIES[2])), CheckContext(WebConfig()))
    assert req.models is not None
    req.models[3] = req.models[3].model_copy(update={"context": {"name": "kept"}})
    names = [
        name
        async for chunk in req.chunks(lambda i, r: r.context["name"], 4)  # type: ignore[arg-type,return-value]
        for name in chunk
    ]
    assert names == ["n0", "n1", "n2", "kept", "n4", "n5", "n6"]
