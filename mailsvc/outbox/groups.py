"""Group commit: requests that arrive while a transaction is open share the next one.

Why: on SQLite every commit is an fsync and there is one writer, so single POSTs that
queue behind each other are cheaper stored together (one fsync for all). Each request
is still checked on its own, a failed write fails the whole group (committing nothing),
and every caller gets its answer only after the commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..errors import OutboxError

__all__ = ["GroupCommit"]

Req = TypeVar("Req")
Res = TypeVar("Res")


@dataclass(slots=True)
class _Join(Generic[Req, Res]):
    request: Req
    future: asyncio.Future[Res]


class GroupCommit(Generic[Req, Res]):
    """Run ``commit`` over the requests waiting; it answers each with a result or an exception.

    ``commit(take)`` calls ``take()`` once its transaction has begun, so whoever arrived while
    it waited for the write lock joins this group rather than the next.
    """

    def __init__(self, commit: Callable[[Callable[[], list[Req]]], Awaitable[list[Res | Exception]]]) -> None:
        self._commit = commit
        self._joining: list[_Join[Req, Res]] = []
        self._committer: asyncio.Task[None] | None = None

    async def join(self, request: Req) -> Res:
        fut: asyncio.Future[Res] = asyncio.get_running_loop().create_future()
        self._joining.append(_Join(request, fut))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._run())
        return await asyncio.shield(fut)  # a cancelled caller's request may still be committed, never half

    async def _run(self) -> None:
        while self._joining:
            group: list[_Join[Req, Res]] = []

            def take() -> list[Req]:
                nonlocal group
                group, self._joining = self._joining, []
                return [j.request for j in group]

            try:
                outcomes = await self._commit(take)
            except Exception as exc:  # the transaction failed: nobody's request is stored
                _fail(group or self._take_all(), exc)  # failed to begin: those waiting for it fail with it
                continue
            except BaseException:
                _fail(group or self._take_all(), OutboxError("the outbox was closing; nothing was stored"))
                raise
            for j, outcome in zip(group, outcomes, strict=True):
                if j.future.done():
                    continue
                if isinstance(outcome, Exception):
                    j.future.set_exception(outcome)
                else:
                    j.future.set_result(outcome)

    def _take_all(self) -> list[_Join[Req, Res]]:
        group, self._joining = self._joining, []
        return group


def _fail(group: list[_Join[Req, Res]], exc: Exception) -> None:
    for j in group:
        if not j.future.done():
            j.future.set_exception(exc)
