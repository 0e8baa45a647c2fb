"""What a report sent to a return path says: a hard or soft bounce, a complaint, or nothing we act on.

Three shapes arrive at a VERP address:

- RFC 3464 DSNs (Postfix, Gmail, Exchange, Exim 4 with ``dsn_from``...): ``multipart/report;
  report-type=delivery-status`` with a ``message/delivery-status`` part, one block per recipient with
  ``Action``, ``Status`` (``5.1.1``) and ``Diagnostic-Code`` (``smtp; 550 5.1.1 ...``);
- RFC 5965 ARF complaints (Yahoo, AOL, Microsoft's JMRP...): ``multipart/report;
  report-type=feedback-report`` with a ``message/feedback-report`` part (``Feedback-Type: abuse``);
- plain-text bounces with no report part (Exim's classic bounce, qmail, old Exchange): these are read
  by `flufl.bounce <https://flufl-bounce.readthedocs.io>`_ (GNU Mailman's detectors), which tells
  permanent from temporary failures (a temporary one is a delay warning: not acted on); the SMTP reply
  quoted in the text is then found with one regular expression (a ``4xx``/``5xx`` code, optionally
  followed by an enhanced status code), in the text before any returned message.

Which recipient a report is about is not read from it: the VERP token says so (:mod:`mailsvc.verp`).
When a DSN carries several recipient blocks, the block naming that recipient is used, else the first
``failed`` one, else the first.

>>> report = classify(b"Content-Type: text/plain\\r\\n\\r\\nHello")
>>> report.kind
'none'
"""

from __future__ import annotations

import email
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email import policy
from email.message import Message
from typing import Literal

from flufl.bounce import all_failures

__all__ = ["Report", "classify"]

Kind = Literal["hard", "soft", "complaint", "none"]

_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})")
# An SMTP reply quoted in a bounce's text: "550 5.1.1 <bob@...>: ..." or "550-5.1.1 ..." or "550 User unknown".
_QUOTED_REPLY = re.compile(r"\b([45]\d\d)[ -](?:([45]\.\d{1,3}\.\d{1,3})\s)?([^\r\n]*)")
_MAX_TEXT = 900  # characters of a diagnostic kept (the outbox keeps 1000 of a reply)
_MAX_MULTIPARTS = 50  # a DSN has 2-5 (Gmail's: 6); a returned message may hold a few more
# flufl.bounce logs each detector at INFO and a traceback for one that trips on odd input (a report
# without From, say), then re-raises: input anyone can send, so the listener logs one line instead.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)


@dataclass(frozen=True, slots=True)
class Report:
    """A report's verdict: ``kind``, and for a bounce its status (``5.1.1``), SMTP code and diagnostic text.

    ``hard``: the mail was not delivered and will not be (a DSN ``Action: failed`` with a 5.x.x status,
    or a permanent plain-text bounce). ``soft``: not delivered, but for a reason that may pass (``failed``
    with 4.x.x: the reporting MTA gave up on a temporary failure). ``complaint``: an ARF report.
    ``none``: nothing to record (``delayed``, ``delivered``, ``relayed``, an auto-reply, an unknown shape).
    """

    kind: Kind
    status: str = ""
    code: int | None = None
    diagnostic: str = ""
    source: str = ""  # dsn, arf or text: what the report was read as
    note: str = ""  # why a report was not acted on (the log says it)

    @property
    def reply(self) -> str:
        """The recipient's last reply as the outbox keeps it: the status, then the diagnostic."""
        text = " ".join(p for p in (self.status, self.diagnostic) if p)
        return text[:_MAX_TEXT]


def classify(raw: bytes, recipient: str = "") -> Report:
    """Read one report; ``recipient`` (what the VERP token named) picks its block of a multi-recipient DSN.

    Never raises: a report it cannot read (malformed, or nested past any real one's depth: the
    stdlib's parser recurses, and anyone may send one) is ``none``, with the reason as its note.
    """
    if raw.lower().count(b"boundary=") > _MAX_MULTIPARTS:
        return Report("none", note=f"more than {_MAX_MULTIPARTS} multiparts: not a report any MTA writes")
    try:
        return _classify(raw, recipient)
    except (RecursionError, LookupError, ValueError, TypeError) as exc:
        return Report("none", note=f"unreadable ({type(exc).__name__})")


def _classify(raw: bytes, recipient: str) -> Report:
    msg = email.message_from_bytes(raw, policy=policy.compat32)
    if msg.get_content_type() == "multipart/report":
        report_type = str(msg.get_param("report-type", "", header="content-type") or "").lower()
        if report_type == "feedback-report" or _part(msg, "message/feedback-report") is not None:
            return _complaint(msg)
        status = _part(msg, "message/delivery-status")
        if status is not None:
            return _dsn(status, recipient)
    return _text(msg)


def _part(msg: Message, content_type: str) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() == content_type:
            return part
    return None


def _complaint(msg: Message) -> Report:
    fields = _part(msg, "message/feedback-report")
    feedback_type = ""
    if fields is not None:
        blocks = _blocks(fields)
        if blocks:
            feedback_type = _one_line(blocks[0].get("Feedback-Type", ""))
    return Report("complaint", diagnostic=f"complaint: {feedback_type or 'abuse'}", source="arf")


def _blocks(part: Message) -> list[Message]:
    """A delivery-status or feedback-report part's field blocks (the stdlib parses them as messages)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    if isinstance(payload, str):  # a part the parser left as text (unusual transfer encodings)
        return [email.message_from_string(block) for block in re.split(r"\r?\n\r?\n", payload) if block.strip()]
    return []


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def _address(value: str) -> str:
    """``rfc822; bob@example.com`` -> ``bob@example.com``."""
    return value.partition(";")[2].strip().strip("<>").lower() if ";" in value else value.strip().strip("<>").lower()


def _dsn(part: Message, recipient: str) -> Report:
    blocks = _blocks(part)[1:]  # the first block is about the message, the rest one per recipient
    if not blocks:
        return Report("none", source="dsn", note="a delivery-status part with no recipient block")
    block = _pick(blocks, recipient.lower())
    action = _one_line(block.get("Action", "")).lower()
    status_text = _one_line(block.get("Status", ""))
    m = _STATUS.match(status_text)
    status = m.group(0) if m else ""
    diagnostic = _one_line(block.get("Diagnostic-Code", ""))
    code = _code(diagnostic)
    if action != "failed":
        note = f"Action: {action or 'missing'} (only failed is a bounce)"
        return Report("none", status, code, diagnostic, "dsn", note)
    if status.startswith("5"):
        return Report("hard", status, code, diagnostic, "dsn")
    if status.startswith("4"):
        return Report("soft", status, code, diagnostic, "dsn")
    hard = code is not None and code >= 500  # no usable Status: trust the SMTP reply, if any
    return Report("hard" if hard else "soft", status or "5.0.0" if hard else status, code, diagnostic, "dsn")


def _pick(blocks: Sequence[Message], recipient: str) -> Message:
    for block in blocks:
        for name in ("Final-Recipient", "Original-Recipient"):
            if recipient and _address(str(block.get(name, ""))) == recipient:
                return block
    for block in blocks:
        if _one_line(block.get("Action", "")).lower() == "failed":
            return block
    return blocks[0]


def _code(diagnostic: str) -> int | None:
    """The SMTP code of ``smtp; 550 5.1.1 ...`` (None for another diagnostic type, ``X-Postfix; connect to ...``).

    >>> _code("smtp; 550-5.1.1 no such user"), _code("X-Postfix; connect to a[203.0.113.5]:25: timed out")
    (550, None)
    """
    kind, sep, text = diagnostic.partition(";")
    m = re.match(r"\s*([245]\d\d)\b", text) if sep and kind.strip().lower() == "smtp" else None
    return int(m.group(1)) if m else None


def _text(msg: Message) -> Report:
    """A bounce without a report part: flufl.bounce's detectors judge permanent vs temporary."""
    try:
        temporary, permanent = all_failures(msg)
    except Exception as exc:  # a detector's bug on malformed input: not a bounce we can read
        return Report("none", source="text", note=f"unreadable ({type(exc).__name__} in flufl.bounce)")
    if not permanent and not temporary:
        return Report("none", source="text", note="not a bounce any detector recognises (an auto-reply?)")
    m = _QUOTED_REPLY.search(_body_text(msg))
    code = int(m.group(1)) if m else None
    status = m.group(2) if m and m.group(2) else ""
    diagnostic = _one_line(m.group(0))[:_MAX_TEXT] if m else ""
    if permanent:
        return Report("hard", status or "5.0.0", code, diagnostic, "text")
    return Report("none", status, code, diagnostic, "text", "a delay warning (the reporting MTA still tries)")


def _body_text(msg: Message) -> str:
    """The text parts of a bounce (not the returned message, whose own text could quote anything)."""
    texts: list[str] = []
    for part in msg.walk():
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
            break
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                texts.append(payload.decode(part.get_content_charset() or "utf-8", "replace"))
    return "\n".join(texts)
