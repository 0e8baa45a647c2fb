"""The state vocabulary is declared once, and both backends derive a message's state by the same rule."""

from __future__ import annotations

from collections.abc import AsyncIterator
from itertools import combinations_with_replacement

import pytest

from mailsvc.message import Message
from mailsvc.outbox.postgres import PostgresOutbox
from mailsvc.outbox.states import (
    FINAL,
    FINAL_MESSAGE,
    OUTCOMES,
    PENDING,
    REPORTED,
    MessageState,
    RecipientState,
    derive_state,
    sql_list,
)
from tests.pgtools import fresh_schema

# Every set of recipient states a message of one to three recipients can be in.
COMBOS = [list(c) for n in (1, 2, 3) for c in combinations_with_replacement(list(RecipientState), n)]


def test_every_message_state_is_reachable_and_nothing_else() -> None:
    """``mailsvc bulk --wait`` once counted 'expired' as a final message state; no message is ever in it."""
    assert {derive_state(c) for c in COMBOS} == set(MessageState)
    assert {derive_state(c) for c in COMBOS if set(c) <= FINAL} == FINAL_MESSAGE
    assert "expired" not in set(MessageState)


def test_the_sets_partition_the_recipient_states() -> None:
    assert FINAL | PENDING == set(RecipientState) and not FINAL & PENDING
    # A worker records what an attempt gave; "suppressed" is decided at enqueue, "cancelled" by a cancel,
    # and "bounced"/"complained" by a report that arrives after delivery (mailsvc.bounces).
    after = {RecipientState.SUPPRESSED, RecipientState.BOUNCED, RecipientState.COMPLAINED}
    assert OUTCOMES == (FINAL - after - {RecipientState.CANCELLED}) | {RecipientState.DEFERRED}
    assert set(REPORTED) == after - {RecipientState.SUPPRESSED} and all(s <= FINAL for s in REPORTED.values())
    assert sql_list(PENDING) == "('deferred', 'queued', 'scheduled', 'sending')"
    with pytest.raises(ValueError):
        sql_list(["x'); DROP TABLE messages; --"])


@pytest.fixture
async def pg() -> AsyncIterator[PostgresOutbox]:
    async with fresh_schema("st") as url:
        box = PostgresOutbox(url, pool_size=2)
        await box.open()
        try:
            yield box
        finally:
            await box.close()


async def test_postgres_derives_states_in_sql_as_derive_state_does(pg: PostgresOutbox) -> None:
    """PostgreSQL settles in one SQL statement; its CASE must give what the Python rule gives, for every mix."""
    envelopes = [
        Message(
            f"m{i}", recipients=[f"r{j}@example.com" for j in range(len(c))], body="x", sender="s@example.com"
        ).build()
        for i, c in enumerate(COMBOS)
    ]
    ids = (await pg.enqueue(envelopes)).ids
    async with pg.pool.acquire() as conn:
        for id_, combo in zip(ids, COMBOS, strict=True):
            for position, state in enumerate(combo):
                await conn.execute(
                    "UPDATE mailsvc_recipient SET state = $3 WHERE message_pk = $1 AND position = $2",
                    id_,
                    position,
                    str(state),
                )
    async with pg.store.write("restate") as tx:
        await tx.settle([], ids)
    got = [(await pg.status(i)).state for i in ids]
    assert got == [derive_state(c) for c in COMBOS]
