"""The stdlib writer of a :class:`BuildPlan`: an ``EmailMessage`` tree, flattened to bytes.

Why it exists beside ``fastbuild``: it writes every shape (attachments, inline
images, any charset, extra alternatives, SMTPUTF8); ``fastbuild`` writes the
common ones faster and hands the rest here. Both follow the same plan, so the
headers and parts are decided once, in :meth:`mailsvc.message.Message.plan`.
"""

from __future__ import annotations

import binascii
import unicodedata
from collections.abc import Sequence
from email import policy as _policy
from email.message import EmailMessage, MIMEPart
from typing import Any

from .errors import MessageError
from .parts import Attachment, BuildPlan

__all__ = ["POLICY_7BIT", "POLICY_UTF8", "attachment_body", "mime_bytes"]

# Built once: 7bit transfer encodings so no server needs 8BITMIME, CRLF on the wire.
POLICY_7BIT = _policy.SMTP.clone(cte_type="7bit")
POLICY_UTF8 = _policy.SMTPUTF8


def mime_bytes(plan: BuildPlan) -> bytes:
    """Write ``plan`` with the stdlib's ``EmailMessage``: any shape, any charset, attachments, SMTPUTF8."""
    pol = POLICY_UTF8 if plan.smtputf8 else POLICY_7BIT
    m = EmailMessage(policy=pol)
    for name, value in plan.headers:
        m[name] = value
    (subtype, content), *alternatives = plan.parts
    try:
        m.set_content(content, subtype=subtype, charset=plan.charset)
        for subtype, content in alternatives:
            m.add_alternative(content, subtype=subtype, charset=plan.charset)
    except (LookupError, UnicodeError) as exc:
        raise MessageError("charset", f"cannot encode the body as {plan.charset!r}: {exc}") from exc
    _add_attachments(m, plan.attachments, plan.ascii_attachments)
    return m.as_bytes(policy=pol)


def attachment_body(data: bytes | str) -> bytes:
    """The bytes an attachment's body has in what :func:`mime_bytes` writes: base64 lines, CRLF-ended.

    Why: a bulk batch sends one attachment to every recipient; the outbox stores these
    bytes once and cuts them out of each message (``Outbox.enqueue_stream(shared=...)``).
    It is the stdlib's encoding (``email.contentmanager.set_bytes_content``: base64 in
    lines of ``max_line_length // 4 * 3`` input bytes, as both policies write it, with
    CRLF line ends); ``tests/test_blobs.py`` holds it to what :func:`mime_bytes` writes,
    and the outbox cuts only where these exact bytes are found, so a difference would
    store more, never send other bytes.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    step = (POLICY_7BIT.max_line_length or 78) // 4 * 3
    return b"".join(binascii.b2a_base64(raw[i : i + step]).replace(b"\n", b"\r\n") for i in range(0, len(raw), step))


def _add_attachments(m: EmailMessage, attachments: Sequence[Attachment], ascii_names: bool) -> None:
    html_part = _find_html(m)
    # Inline parts first: once the root turns multipart/mixed, an html-only root can
    # no longer become multipart/related, so the order of attach() calls must not matter.
    ordered = sorted(attachments, key=lambda a: not (a.is_inline and html_part is not None))
    for att in ordered:
        related = html_part if att.is_inline else None
        part = _attach(m, att, related, ascii_names)
        for k, v in (att.headers or {}).items():
            if k.lower() != "content-id":
                part[k] = v


def _attach(m: EmailMessage, att: Attachment, related: MIMEPart | None, ascii_names: bool) -> MIMEPart:
    """Add one attachment (to the HTML part as related content when inline); return its new part."""
    maintype, subtype = att.resolved_content_type()
    data = att.data.encode("utf-8") if isinstance(att.data, str) else bytes(att.data)
    filename = _ascii_filename(att.filename) if (ascii_names and att.filename) else att.filename
    if related is not None:
        related.add_related(data, maintype, subtype, cid=att.content_id, filename=filename, disposition="inline")
        return _last_part(related)
    kwargs: dict[str, Any] = {"filename": filename, "disposition": (att.disposition or "attachment").lower()}
    if att.content_id:
        kwargs["cid"] = att.content_id
    m.add_attachment(data, maintype, subtype, **kwargs)
    return _last_part(m)


def _last_part(m: MIMEPart) -> MIMEPart:
    """The part just added to ``m`` (``add_related``/``add_attachment`` append it)."""
    *_, part = m.iter_parts()
    return part


def _find_html(m: EmailMessage) -> MIMEPart | None:
    if m.get_content_type() == "text/html":
        return m
    if m.get_content_type() == "multipart/alternative":
        for part in m.iter_parts():
            if part.get_content_type() == "text/html":
                return part
    return None


def _ascii_filename(name: str) -> str:
    """Flask-Mail's MAIL_ASCII_ATTACHMENTS: transliterate for mail clients that mangle RFC 2231."""
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii") or "attachment"
