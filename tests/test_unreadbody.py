"""``web/unreadbody``'s decisions at the ASGI level, with a queue standing in for hypercorn's receive.

The end-to-end behaviour (raw sockets against hypercorn) is in tests/test_slow_clients.py; these pin the
cases Quart never produces, such as an answer whose body comes in its last message.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mailsvc.web.unreadbody import DRAIN_BYTES, RequestBody, UnreadBodyAnswer


def _chunk(data: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


async def _answer(body: RequestBody, final_body: bytes = b"denied") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    answer = UnreadBodyAnswer(body, send)
    await answer.send({"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"6")]})
    await answer.send({"type": "http.response.body", "body": final_body, "more_body": False})
    return sent


async def test_a_small_body_on_its_way_is_drained_and_the_connection_kept() -> None:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    body = RequestBody(queue.get, declared=10)
    asyncio.get_running_loop().call_later(0.05, queue.put_nowait, _chunk(b"0123456789", more=False))
    sent = await _answer(body)
    assert body.ended and body.received == 10
    assert (b"connection", b"close") not in sent[0]["headers"]
    assert sent[1] == {"type": "http.response.body", "body": b"denied", "more_body": False}


async def test_a_body_too_big_to_drain_gets_close_and_the_answer_before_the_linger() -> None:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    body = RequestBody(queue.get, declared=DRAIN_BYTES * 4)

    async def client() -> None:
        for _ in range(3):  # keeps sending while the answer lingers, then finishes
            await asyncio.sleep(0.05)
            queue.put_nowait(_chunk(b"x" * 1024, more=True))
        queue.put_nowait(_chunk(b"", more=False))

    task = asyncio.create_task(client())
    sent = await _answer(body)
    await task
    assert (b"connection", b"close") in sent[0]["headers"]
    # The answer's bytes go out first; the end comes once the rest of the body was thrown away.
    assert sent[1] == {"type": "http.response.body", "body": b"denied", "more_body": True}
    assert sent[2] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert body.ended and body.received == 3 * 1024


async def test_a_client_that_went_away_needs_no_drain() -> None:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    queue.put_nowait({"type": "http.disconnect"})
    body = RequestBody(queue.get, declared=100)
    sent = await _answer(body)
    assert body.ended and (b"connection", b"close") not in sent[0]["headers"]


async def test_a_408_is_not_drained() -> None:
    """The client was too slow with this body already: no waiting for the rest, the connection is closed."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    body = RequestBody(queue.get, declared=10)
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    answer = UnreadBodyAnswer(body, send)
    await answer.send({"type": "http.response.start", "status": 408, "headers": []})
    assert sent[0]["headers"] == [(b"connection", b"close")] and body.received == 0
