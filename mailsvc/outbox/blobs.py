"""Bytes shared by many messages of a batch, stored once: cut out at enqueue, spliced back at claim.

Why: a bulk request sends one attachment to every recipient, so each message's MIME
carries the same base64 body; stored per message, a 9 MB file to 50 recipients grew
the outbox by 1.2 GB (issue 13, finding 7). The caller names the shared bytes
(``Outbox.enqueue_stream(shared=...)``: an attachment's encoded body, exactly as the
writer emits it); each is stored once under its sha256, and each message keeps its
data without them plus a :class:`Splice` per place one was cut from.

Why offsets, never markers: a message is put back together only at the offsets
recorded when *its own* bytes were cut, so no body text (however much it looks like
a marker) can pull another message's or another tenant's blob into it, and the
bytes a worker sends are exactly the bytes that were built. A blob is cut only where
its exact bytes occur; one that occurs nowhere is not stored at all.

    >>> shared = SharedBlobs([b"B" * 5000])
    >>> rest, splices = shared.cut(b"head " + b"B" * 5000 + b" tail")
    >>> rest, [s.at for s in splices]
    (b'head  tail', [5])
    >>> reassemble(rest, splices, shared.by_digest) == b"head " + b"B" * 5000 + b" tail"
    True
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import OutboxError

__all__ = ["SHARED_MIN", "SharedBlobs", "Splice", "check_blobs", "digest_of", "reassemble"]

#: Shared bytes shorter than this stay inline: a row and a splice cost more than they save.
SHARED_MIN = 4096


@dataclass(frozen=True, slots=True)
class Splice:
    """Where one blob goes back: at offset ``at`` of the stored (cut) data, in order of ``position``."""

    at: int
    digest: str  # sha256 of the blob, hex


def digest_of(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


class SharedBlobs:
    """The shared bytes of one enqueue, by digest (those under :data:`SHARED_MIN` dropped, repeats merged).

    Hashing and cutting read every byte, so callers run both off the event loop.
    """

    def __init__(self, blobs: Iterable[bytes]) -> None:
        self.by_digest: dict[str, bytes] = {}
        for blob in blobs:
            if len(blob) >= SHARED_MIN:
                self.by_digest.setdefault(digest_of(bytes(blob)), bytes(blob))

    def __bool__(self) -> bool:
        return bool(self.by_digest)

    def cut(self, data: bytes) -> tuple[bytes, tuple[Splice, ...]]:
        """``data`` without every occurrence of a blob, and where each one was.

        Occurrences that overlap one already cut (a blob inside another) stay inline;
        ``reassemble(*self.cut(data), self.by_digest) == data`` always.
        """
        found: list[tuple[int, int, str]] = []
        for digest, blob in self.by_digest.items():
            at = data.find(blob)
            while at >= 0:
                found.append((at, -len(blob), digest))
                at = data.find(blob, at + len(blob))
        if not found:
            return data, ()
        found.sort()
        pieces: list[bytes] = []
        splices: list[Splice] = []
        pos = kept = 0
        for start, neg_len, digest in found:
            if start < pos:
                continue
            pieces.append(data[pos:start])
            kept += start - pos
            splices.append(Splice(kept, digest))
            pos = start - neg_len
        pieces.append(data[pos:])
        return b"".join(pieces), tuple(splices)

    def cut_all(self, datas: Sequence[bytes]) -> list[tuple[bytes, tuple[Splice, ...]]]:
        return [self.cut(d) for d in datas]


def reassemble(data: bytes, splices: Sequence[Splice], blobs: Mapping[str, bytes]) -> bytes:
    """The bytes that were cut: each blob put back at its recorded offset, in order.

    Raises :class:`OutboxError` when a splice does not fit the stored data or its blob
    is missing: the message is not sent with other bytes than it was built with.
    """
    if not splices:
        return data
    pieces: list[bytes] = []
    pos = 0
    for s in splices:
        blob = blobs.get(s.digest)
        if blob is None or not pos <= s.at <= len(data):
            raise OutboxError(f"the outbox cannot put a message back together (blob {s.digest[:12]} at {s.at})")
        pieces.append(data[pos : s.at])
        pieces.append(blob)
        pos = s.at
    pieces.append(data[pos:])
    return b"".join(pieces)


def check_blobs(blobs: Mapping[str, bytes]) -> None:
    """Every blob read back is the one its digest names (else :class:`OutboxError`, nothing is sent)."""
    for digest, blob in blobs.items():
        if digest_of(blob) != digest:
            raise OutboxError(f"the outbox's stored blob {digest[:12]} does not match its digest")
