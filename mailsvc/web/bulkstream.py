"""A bulk request walked a recipient at a time: parsed, checked, rendered and stored in chunks.

Why: a 100,000-recipient body is ~75 MB of JSON, ~290 MB once parsed into
Python objects and ~300 MB more once rendered. Here the body stays text: its
top-level fields are parsed, and the ``recipients`` array is walked twice with
the json module's own scanner, one element at a time. The first walk validates
every entry (so a bad address is a 422 before anything is rendered or locked),
counts them and hashes them for the idempotency fingerprint; the second renders
and MIME-builds a chunk at a time, off the event loop, feeding
:meth:`Outbox.enqueue_stream`, which stores every chunk in one transaction (on
SQLite: in steps into a stage one last transaction seals). So a batch is still
accepted whole or not at all, and the 202 still comes after the commit. The
JSON walking is :mod:`mailsvc.web.jsonscan`; rendering and building one
message is the caller's ``build_one`` (``compose.BulkBuilder``), so this module
imports neither the renderer nor the message build.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

from pydantic import ValidationError

from ..message import Envelope
from .json_limits import MAX_DEPTH, first_problem
from .jsonscan import BulkBody
from .problems import FieldError, ProblemException, errors_from_validation, is_too_large, not_an_object
from .schemas import BulkHead, BulkRecipient, CheckContext

__all__ = ["CHUNK", "CHUNK_BYTES", "BulkRequest", "chunk_size"]

CHUNK = 250  # messages rendered and stored together: ~1 MB of MIME at a time
CHUNK_BYTES = 32 * 1024 * 1024  # at most this much MIME per chunk, when messages carry attachments
# A body up to this size, of at most this many recipients, keeps the first walk's validated recipients for the
# second (~5 times its size in Python objects for newsletter-like entries; ~650 bytes an entry however small it
# is: 180,000 one-address entries fit in 4 MiB and were 117 MB kept); any other is walked and validated again,
# so its memory stays one chunk's.
KEEP_MODELS_CHARS = 4 * 1024 * 1024
KEEP_MODELS_MAX = 10_000


def chunk_size(attachment_bytes: int) -> int:
    """Messages per chunk when each carries ``attachment_bytes`` of encoded attachments.

    Why: two chunks are in memory at once (one built while one is stored); at 250
    messages of 12 MB that was 6 GB for one request. Few messages of that size fill a chunk.
    """
    return max(1, min(CHUNK, CHUNK_BYTES // max(1, attachment_bytes)))


_MAX_REPORTED = 20


class BulkRequest:
    """A validated bulk request: its head model, its recipient count, its fingerprint (None: not asked for).

    Built by :meth:`check` (the first walk); :meth:`chunks` is the second walk, over the first one's
    recipients when the body was small enough to keep them (``models``).
    """

    def __init__(
        self,
        body: BulkBody,
        head: BulkHead,
        count: int,
        fingerprint: str | None,
        context: CheckContext,
        models: list[BulkRecipient] | None = None,
    ) -> None:
        self.body = body
        self.head = head
        self.count = count
        self.fingerprint = fingerprint
        self.context = context
        self.models = models

    @classmethod
    def check(cls, body: BulkBody, context: CheckContext, *, keyed: bool = True) -> BulkRequest:
        """Validate everything that can be checked without rendering; 422 (413 for sizes) with every field.

        ``keyed``: the request has an idempotency key, so its fingerprint is computed (else it is None).
        """
        if not isinstance(body.head, dict):
            raise not_an_object()
        report = _Report()
        head = _check_head(body, context, report)
        fingerprint = _Fingerprint(head) if keyed else None
        models: list[BulkRecipient] | None = [] if len(body.text) <= KEEP_MODELS_CHARS else None
        count = 0
        for _, raw in body.recipients(None):
            r = _check_recipient(raw, f"recipients[{count}]", context, report)
            if r is not None and report.clean:
                if fingerprint is not None:
                    fingerprint.add(r)
                if models is not None and len(models) < KEEP_MODELS_MAX:
                    models.append(r)
                else:
                    models = None  # too many to keep: the second walk parses again
            count += 1
        if body.recipients_at is not None and count == 0:
            report.errors.append(FieldError(field="recipients", reason="must have at least one entry"))
        if count > context.web.max_batch:
            reason = f"{count} messages; the limit per batch is {context.web.max_batch}"
            report.errors.append(FieldError(field="recipients", reason=reason))
        if not report.clean or head is None:
            raise report.problem()
        digest = fingerprint.hexdigest() if fingerprint is not None else None
        return cls(body, head, count, digest, context, models)

    async def chunks(
        self, build_one: Callable[[int, BulkRecipient], Envelope], size: int = CHUNK
    ) -> AsyncGenerator[list[Envelope], None]:
        """Build ``size`` messages at a time in a thread; the next chunk is built while one is stored.

        ``build_one(i, recipient)`` raises :class:`ProblemException` naming ``recipients[i]``'s field.
        Raises :class:`ProblemException` (422, up to 20 fields) after the last chunk when any message
        failed to build; nothing is yielded after the first failure, so the caller's transaction rolls back.
        """

        def walk(start: int | None, index: int) -> Iterator[tuple[int | None, BulkRecipient]]:
            """(where to resume, recipient): the kept models from ``index``, or the body walked again."""
            if self.models is not None:
                last = len(self.models) - 1
                for at in range(index, last + 1):
                    yield (at + 1 if at < last else None), self.models[at]
                return
            for nxt, raw in self.body.recipients(start):
                yield nxt, BulkRecipient.model_validate(raw, context=self.context)

        def build(start: int | None, index: int) -> tuple[list[Envelope], list[FieldError], int | None, int]:
            envelopes: list[Envelope] = []
            failed: list[FieldError] = []
            nxt: int | None = None
            for nxt, r in walk(start, index):  # noqa: B007 (nxt is returned: where to resume)
                try:
                    envelopes.append(build_one(index, r))
                except ProblemException as exc:
                    failed.extend(exc.errors)
                index += 1
                if index % size == 0:
                    break
            return envelopes, failed, nxt, index

        errors: list[FieldError] = []
        job: asyncio.Future[tuple[list[Envelope], list[FieldError], int | None, int]] | None
        job = asyncio.ensure_future(asyncio.to_thread(build, None, 0))
        try:
            while job is not None:
                envelopes, failed, nxt, index = await job
                job = None
                errors.extend(failed)
                if nxt is not None and len(errors) < _MAX_REPORTED:
                    job = asyncio.ensure_future(asyncio.to_thread(build, nxt, index))
                if not errors:
                    yield envelopes
        finally:
            if job is not None:
                job.cancel()
                await asyncio.gather(job, return_exceptions=True)
        if errors:
            raise ProblemException(
                422, "some messages of the batch cannot be built; nothing was queued", errors=errors[:_MAX_REPORTED]
            )


class _Report:
    """The fields found wrong so far (the first 20 recipients' worth), and whether any was a size."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []
        self.too_large = False

    @property
    def clean(self) -> bool:
        return not self.errors

    def note(self, error: FieldError) -> None:
        if len(self.errors) < _MAX_REPORTED:
            self.errors.append(error)

    def add(self, exc: ValidationError, prefix: str = "") -> None:
        if len(self.errors) < _MAX_REPORTED:
            self.errors.extend(errors_from_validation(exc, prefix=prefix))
        self.too_large = self.too_large or is_too_large(exc)

    def problem(self) -> ProblemException:
        status = 413 if self.too_large else 422
        return ProblemException(
            status, "some fields are invalid; nothing was queued", errors=self.errors[: _MAX_REPORTED + 5]
        )


def _check_recipient(raw: Any, where: str, context: CheckContext, report: _Report) -> BulkRecipient | None:
    unusable = first_problem(raw, where, MAX_DEPTH - 2)  # an entry sits two levels inside the body
    if unusable is not None:
        report.note(unusable)
        return None
    try:
        return BulkRecipient.model_validate(raw, context=context)
    except ValidationError as exc:
        report.add(exc, prefix=where)
        return None


def _check_head(body: BulkBody, context: CheckContext, report: _Report) -> BulkHead | None:
    """Everything but the recipients, validated; ``recipients`` itself must be a non-missing array."""
    head_data = dict(body.head)
    shape: list[FieldError] = []
    unusable = first_problem(head_data)
    if unusable is not None:
        report.note(unusable)
        return None
    if "recipients" in head_data:  # there, but not an array
        shape.append(FieldError(field="recipients", reason="must be a list"))
        del head_data["recipients"]
    elif body.recipients_at is None:
        shape.append(FieldError(field="recipients", reason="is required"))
    head: BulkHead | None = None
    try:
        head = BulkHead.model_validate(head_data, context=context)
    except ValidationError as exc:
        report.add(exc)
    report.errors.extend(shape)
    return head


class _Fingerprint:
    """The hash ``fingerprint_of("bulk", BulkIn.model_dump_json())`` gives, fed a recipient at a time.

    ``recipients`` is BulkIn's last field, so the head's JSON is the prefix and ``]}`` the end.
    """

    def __init__(self, head: BulkHead | None) -> None:
        self._digest = hashlib.sha256(b"bulk\x00")
        self._count = 0
        if head is not None:
            head_json = head.model_dump_json()
            opening = ',"recipients":[' if head_json != "{}" else '"recipients":['
            self._digest.update((head_json[:-1] + opening).encode("utf-8", "surrogatepass"))

    def add(self, recipient: BulkRecipient) -> None:
        self._digest.update(
            (b"," if self._count else b"") + recipient.model_dump_json().encode("utf-8", "surrogatepass")
        )
        self._count += 1

    def hexdigest(self) -> str:
        digest = self._digest.copy()
        digest.update(b"]}")
        return digest.hexdigest()
