"""Per-recipient outcomes: a bulk send reports every recipient, never a bare count."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["RecipientResult", "SendResult", "Status"]

Status = Literal["delivered", "refused", "failed", "suppressed"]


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """What happened to one envelope recipient.

    ``refused`` carries the server's ``code`` and ``reply``; ``failed`` means no
    reply was obtained (connection dropped, timeout) and ``reply`` holds the reason.
    """

    recipient: str
    status: Status
    code: int | None = None
    reply: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("delivered", "suppressed")

    @property
    def transient(self) -> bool:
        """Worth retrying: a 4xx reply or no reply at all."""
        if self.status == "failed":
            return True
        return self.status == "refused" and self.code is not None and 400 <= self.code < 500


@dataclass(frozen=True, slots=True)
class SendResult:
    """One message's outcome with a :class:`RecipientResult` per recipient."""

    message_id: str
    recipients: tuple[RecipientResult, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """Every recipient accepted."""
        return all(r.ok for r in self.recipients)

    @property
    def delivered(self) -> list[str]:
        return [r.recipient for r in self.recipients if r.ok]

    @property
    def refused(self) -> dict[str, RecipientResult]:
        return {r.recipient: r for r in self.recipients if not r.ok}

    @classmethod
    def all_failed(
        cls, message_id: str, recipients: tuple[str, ...], reason: str, code: int | None = None
    ) -> SendResult:
        status: Status = "refused" if code is not None else "failed"
        return cls(message_id, tuple(RecipientResult(r, status, code, reason) for r in recipients))
