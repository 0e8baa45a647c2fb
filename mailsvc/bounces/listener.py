"""The bounce listener: an SMTP server (aiosmtpd, in the running loop) that takes reports to our return paths.

What it accepts: ``RCPT TO`` a ``bounces+<token>@<MAILSVC_BOUNCE_DOMAIN>`` whose signed token names a
message the outbox holds and one of its recipients; any other address is a ``550`` at RCPT, so it is
never a relay and a forged or altered token, or a report about mail we never sent, is refused before
its DATA. ``DATA`` is bounded (``MAILSVC_BOUNCE_MAX_BYTES``: aiosmtpd answers ``552`` beyond). Each
accepted report is read by :mod:`.reports` and recorded before the ``250``; a failure to record it is
a ``451``, so the reporting MTA tries again later and nothing is lost.

What is recorded (:meth:`Outbox.record_report`):

- a hard bounce (``Action: failed``, a ``5.x.x`` status; or a permanent plain-text bounce): the recipient
  becomes ``bounced`` with the Status and Diagnostic-Code as its last reply, and the address goes on the
  tenant's suppression list (reason ``hard_bounce``, source ``dsn`` or ``text``);
- ``failed`` with a ``4.x.x`` status (the reporting MTA gave up on a temporary failure): ``bounced``,
  not suppressed (the cause may pass; the next mail is tried);
- an ARF complaint: ``complained``, suppressed (reason ``complaint``, source ``arf``);
- ``delayed``, ``delivered``, ``relayed``, auto-replies and anything unrecognised: logged, accepted (a
  refusal would only make the reporting MTA send it back again), not recorded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from ..errors import ConfigError, OutboxError
from ..outbox import Outbox
from ..outbox.states import RecipientState
from ..verp import ReturnPath
from .reports import Report, classify

__all__ = ["BounceHandler", "BounceServer"]

log = logging.getLogger("mailsvc.bounces")

MAX_RECIPIENTS = 100  # RCPTs one transaction may name (a DSN names one; RFC 5321 requires 100 be accepted)


class BounceHandler:
    """aiosmtpd handler: RCPT checks the token against the outbox; DATA records the report."""

    def __init__(self, outbox: Outbox, return_path: ReturnPath) -> None:
        self.outbox = outbox
        self.return_path = return_path

    async def _resolve(self, address: str) -> tuple[str, str] | None:
        """``(message id, recipient)`` the address's token was minted for; None if it names none."""
        claim = self.return_path.parse(address)
        if claim is None:
            return None
        target = await self.outbox.report_target(claim.message_id)
        if target is None:
            return None
        recipient = next((r for r in target.recipients if self.return_path.matches(claim, r)), None)
        return None if recipient is None else (target.id, recipient)

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 too many recipients in one transaction"
        if self.return_path.parse(address) is None:
            return "550 5.7.1 not a bounce address of this service (it relays nothing)"
        try:
            found = await self._resolve(address)
        except OutboxError as exc:
            log.error("bounce listener could not read the outbox: %s", exc)
            return "451 4.3.0 cannot check this address now; try again later"
        if found is None:
            return "550 5.1.1 no such message or recipient (unknown, or the token does not verify)"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content
        if raw is None:
            raw = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content or "").encode()
        try:
            for address in dict.fromkeys(a.lower() for a in envelope.rcpt_tos):  # a token named twice is read once
                found = await self._resolve(address)
                if found is None:  # the message was purged between RCPT and DATA: nothing left to mark
                    continue
                id_, recipient = found
                # Parsing a large report takes the loop's time: in a thread, so the service keeps answering.
                report = await asyncio.to_thread(classify, raw, recipient)
                await self._record(id_, recipient, report)
        except OutboxError as exc:
            log.error("bounce listener could not record a report: %s", exc)
            return "451 4.3.0 could not record the report; try again later"
        return "250 2.0.0 OK: report received"

    async def _record(self, id_: str, recipient: str, report: Report) -> None:
        if report.kind == "none":
            log.info("report about %s to %s not recorded: %s", id_, recipient, report.note)
            return
        if report.kind == "complaint":
            state, suppress = RecipientState.COMPLAINED, ("complaint", "arf")
        elif report.kind == "hard":
            state, suppress = RecipientState.BOUNCED, ("hard_bounce", report.source)
        else:
            state, suppress = RecipientState.BOUNCED, None
        changed = await self.outbox.record_report(
            id_, recipient, state, code=report.code, reply=report.reply, suppress=suppress
        )
        log.info(
            "%s: %s of %s %s (%s)%s",
            report.kind,
            recipient,
            id_,
            state if changed else f"already final, left as it was (not {state})",
            report.reply or report.source,
            f"; suppressed ({suppress[0]})" if suppress else "",
        )


class BounceServer:
    """Listens on ``host:port`` (port 0: OS-chosen); :attr:`port` is the bound one once started."""

    def __init__(
        self, outbox: Outbox, return_path: ReturnPath, host: str, port: int, *, max_bytes: int, setting: str
    ) -> None:
        self.handler = BounceHandler(outbox, return_path)
        self.host = host
        self.requested_port = port
        self.max_bytes = max_bytes
        self.setting = setting  # what to name when the address cannot be bound
        self.port: int | None = None
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        domain = self.handler.return_path.domain

        def factory() -> SMTP:
            return SMTP(self.handler, hostname=domain, data_size_limit=self.max_bytes, enable_SMTPUTF8=True, loop=loop)

        try:
            self._server = await loop.create_server(factory, host=self.host, port=self.requested_port)
        except OSError as exc:
            raise ConfigError(
                self.setting,
                f"cannot listen on {self.host}:{self.requested_port} ({exc.strerror}); "
                "choose another address or stop what is using it",
            ) from exc
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("bounce listener on %s:%d for bounces+...@%s", self.host, self.port, domain)
        return self.port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
